"""Human-readable outputs of an evaluation: report.md, the PNG plot, and a short printable summary.

Everything here reads only the metrics.json document built by ``pipelines.evaluate.pipeline``, so a report can be
re-rendered from a saved metrics.json without Ray.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REPORT_FILE = "report.md"
PLOT_FILE = "metrics.png"
ALPHA = 0.05
_DISPLAY = {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall", "p": "P"}


def display_name(metric: str) -> str:
    """``ndcg@10`` -> ``nDCG@10``, ``map`` -> ``MAP``."""
    family, _, k = metric.partition("@")
    return f"{_DISPLAY[family]}@{k}" if k else metric.upper()


def primary_metric(metrics: dict[str, Any]) -> str:
    """The metric the verdict is about: nDCG@10, or nDCG at the cutoff closest to 10."""
    k = min(metrics["ks"], key=lambda k: (abs(k - 10), k))
    return f"ndcg@{k}"


def headline_metrics(metrics: dict[str, Any]) -> list[str]:
    """nDCG and MRR at the primary cutoff, Recall at the largest, P@5 (or at the primary cutoff), MAP."""
    ks = metrics["ks"]
    k = int(primary_metric(metrics).split("@")[1])
    return [f"ndcg@{k}", f"mrr@{k}", f"recall@{max(ks)}", f"p@{5 if 5 in ks else k}", "map"]


def significant(stat: dict[str, Any]) -> bool:
    """Significant when both the paired t-test and the randomization test give p < ALPHA."""
    ps = (stat["t_test_p"], stat["randomization_p"])
    return all(p is not None and p < ALPHA for p in ps)


def format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_clause(p: float | None) -> str:
    text = format_p(p)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def verdict(comparison: dict[str, Any], metric: str, bold: bool = True) -> str:
    """One sentence: who wins on `metric`, by how much, whether it is significant, queries improved/hurt."""
    b = "**" if bold else ""
    run, base, n = comparison["run"], comparison["baseline"], comparison["queries"]
    if n == 0:
        return f"{b}{run}{b} and {b}{base}{b} have no evaluated query in common; nothing to compare."
    s = comparison["metrics"][metric]
    name, delta = display_name(metric), s["delta"]
    rel = f" ({s['relative']:+.1%})" if s["relative"] is not None else ""
    if delta > 0:
        head = f"{b}{run}{b} beats {b}{base}{b} on {name} by {delta:+.4f}{rel}"
    elif delta < 0:
        head = f"{b}{run}{b} is worse than {b}{base}{b} on {name} by {delta:+.4f}{rel}"
    else:
        head = f"{b}{run}{b} ties {b}{base}{b} on {name}"
    sig = "significant" if significant(s) else "not significant"
    return (
        f"{head}, {sig} at α={ALPHA} (paired t-test {_p_clause(s['t_test_p'])}, randomization "
        f"{_p_clause(s['randomization_p'])}); {s['improved']} of {n} queries improved, {s['hurt']} hurt."
    )


def _verdict_lines(metrics: dict[str, Any], bold: bool) -> list[str]:
    metric = primary_metric(metrics)
    if not metrics["comparisons"]:
        name = metrics["baseline"]
        run = metrics["runs"][name]
        return [
            f"Only one run ({name}): {display_name(metric)} = {run['mean'][metric]:.4f} over "
            f"{run['queries_evaluated']} queries; nothing to compare."
        ]
    return [verdict(c, metric, bold) for c in metrics["comparisons"]]


def render_summary(metrics: dict[str, Any]) -> str:
    """A few plain lines for logs and the demo: verdicts, then each run's headline means."""
    lines = _verdict_lines(metrics, bold=False) + fusion_lines(metrics, bold=False)
    heads = headline_metrics(metrics)
    width = max(len(n) for n in metrics["runs"])
    for name, run in metrics["runs"].items():
        means = "  ".join(f"{display_name(m)} {run['mean'][m]:.4f}" for m in heads)
        lines.append(f"  {name:<{width}}  {means}  ({run['queries_evaluated']} queries)")
    return "\n".join(lines)


def render_markdown(metrics: dict[str, Any]) -> str:
    """report.md: verdict, overview of means, a table per headline metric, every metric per comparison,
    the runs' inputs and counts, and how the numbers are computed."""
    base = metrics["baseline"]
    q = metrics["qrels"]
    heads = headline_metrics(metrics)
    out = ["# Evaluation report", ""]
    out += [f"**Verdict:** {line}" for line in _verdict_lines(metrics, bold=True)]
    out += ["", *fusion_lines(metrics, bold=True)] if metrics.get("fusion") else []
    out += [
        "",
        f"Baseline: **{base}** (the first run). Qrels: `{q['path']}`, {q['queries']} judged queries, "
        f"{q['judgements']} judgements ({q['relevant']} relevant). A delta is **bold** when both paired "
        f"tests give p < {ALPHA}.",
        "",
        "## Overview",
        "",
        *_table(
            ["run", *map(display_name, heads)],
            [[name, *(f"{run['mean'][m]:.4f}" for m in heads)] for name, run in metrics["runs"].items()],
        ),
        "",
        "## Headline metrics",
        "",
    ]
    for metric in heads:
        out += [f"### {display_name(metric)}", "", *_metric_table(metrics, metric), ""]
    out += ["## All metrics", ""]
    for comparison in metrics["comparisons"]:
        out += [f"### {comparison['run']} vs {base}", "", *_comparison_table(metrics, comparison), ""]
    if not metrics["comparisons"]:
        means = metrics["runs"][base]["mean"]
        out += [*_table(["metric", base], [[display_name(m), f"{means[m]:.4f}"] for m in metrics["metrics"]])]
        out += [""]
    out += ["## Runs", "", *_runs_table(metrics), ""]
    out += _semantics(metrics)
    return "\n".join(out) + "\n"


def fusion_lines(metrics: dict[str, Any], bold: bool) -> list[str]:
    """With --tune-fusion: the weight found, its nDCG@10 and the ends of the grid for scale."""
    fusion = metrics.get("fusion")
    if not fusion:
        return []
    tuned, b = fusion["tuned_on"], "**" if bold else ""
    grid, metric = tuned["grid"], tuned["metric"]
    return [
        f"{b}Fusion weight:{b} w = {fusion['weight']:.2f} for `--fuse linear`, {display_name(metric)} "
        f"{tuned[metric]:.4f} over {tuned['queries']} queries of {fusion['run']} (reranker alone, w = 1: "
        f"{grid['1.00']:.4f}; retrieval alone, w = 0: {grid['0.00']:.4f}); written to `{fusion['file']}`. "
        "Tuned on these judgements: they must be validation queries, not the ones a result is reported on."
    ]


def _stat_cells(s: dict[str, Any]) -> list[str]:
    """Δ, Δ %, both p-values and improved/hurt/tied of one metric of one comparison."""
    delta = f"{s['delta']:+.4f}"
    return [
        f"**{delta}**" if significant(s) else delta,
        f"{s['relative']:+.1%}" if s["relative"] is not None else "n/a",
        format_p(s["t_test_p"]),
        format_p(s["randomization_p"]),
        str(s["improved"]),
        str(s["hurt"]),
        str(s["tied"]),
    ]


_STAT_HEADER = ["Δ %", "p (t-test)", "p (randomization)", "improved", "hurt", "tied"]


def _metric_table(metrics: dict[str, Any], metric: str) -> list[str]:
    base = metrics["baseline"]
    rows = [[f"{base} (baseline)", f"{metrics['runs'][base]['mean'][metric]:.4f}", *["—"] * 7]]
    for c in metrics["comparisons"]:
        mean = f"{metrics['runs'][c['run']]['mean'][metric]:.4f}"
        stats = _stat_cells(c["metrics"][metric]) if c["queries"] else ["n/a"] * 7
        rows.append([c["run"], mean, *stats])
    return _table(["run", "mean", f"Δ vs {base}", *_STAT_HEADER], rows)


def _comparison_table(metrics: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
    base, run = comparison["baseline"], comparison["run"]
    rows = []
    for metric in metrics["metrics"]:
        means = [f"{metrics['runs'][name]['mean'][metric]:.4f}" for name in (base, run)]
        stats = _stat_cells(comparison["metrics"][metric]) if comparison["queries"] else ["n/a"] * 7
        rows.append([display_name(metric), *means, *stats])
    return _table(["metric", base, run, "Δ", *_STAT_HEADER], rows)


def _runs_table(metrics: dict[str, Any]) -> list[str]:
    header = [
        "run",
        "source",
        "ordered by",
        "queries evaluated",
        "judged queries missing",
        "unjudged queries",
    ]
    rows = []
    for name, r in metrics["runs"].items():
        trec = f"`{r['trec_file']}`" if r["trec_file"] else f"not written: {r['trec_file_error']}"
        rows.append(
            [
                name,
                f"`{r['source']}`",
                f"`{r['score_column']}`",
                trec,
                str(r["queries_evaluated"]),
                str(r["queries_missing_from_run"]),
                str(r["queries_not_in_qrels"]),
            ]
        )
    return _table([*header[:3], "TREC run file", *header[3:]], rows, text_columns=4)


def _semantics(metrics: dict[str, Any]) -> list[str]:
    ks = ",".join(map(str, metrics["ks"]))
    return [
        "## How these numbers are computed",
        "",
        "- Metrics follow trec_eval exactly (checked against pytrec_eval): nDCG@k is `ndcg_cut.k` with "
        "linear gain (the judged relevance) and the ideal ranking built from *all* judged documents of the "
        "query; MRR@k is `recip_rank` on the first k documents; Recall@k is `recall.k`; P@k is `P.k` "
        "(always divided by k); MAP is `map` (no cutoff).",
        "- A document is relevant when its relevance is ≥ 1; unjudged documents count as not relevant. "
        "A judged query without relevant documents scores 0 on every metric.",
        "- Each query's documents are ordered by score, highest first; exact ties are ordered by document "
        "id descending, as trec_eval does. The runs' own `rank` column is not used.",
        "- A run's mean is over the queries present in both the run and the qrels (trec_eval's default). "
        "Judged queries missing from a run and run queries without judgements are counted above, not "
        "averaged.",
        "- Δ is the mean per-query difference against the baseline over the queries both runs were "
        "evaluated on; p-values are two-sided (paired t-test; paired randomization test with 10,000 sign "
        "flips). Improved/hurt/tied count those queries.",
        f"- To reproduce with trec_eval: `trec_eval -m ndcg_cut.{ks} -m P.{ks} -m recall.{ks} -m map "
        "QRELS <run>.trec` (TREC qrels text).",
        "",
    ]


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table: the first `text_columns` columns left-aligned, the numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    return [_row(header), _row(align), *(_row(r) for r in rows)]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_plot(metrics: dict[str, Any]) -> bytes:
    """PNG: metric-at-k curves per run (left) and sorted per-query deltas of the primary metric (right)."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    curves, deltas = fig.subplots(1, 2)
    ks = metrics["ks"]
    for i, (name, run) in enumerate(metrics["runs"].items()):
        color = f"C{i}"
        for family, style in (("ndcg", "o-"), ("recall", "s--")):
            values = [run["mean"][f"{family}@{k}"] for k in ks]
            curves.plot(ks, values, style, color=color, label=f"{name} {_DISPLAY[family]}@k")
    if len(ks) > 1 and max(ks) / min(ks) >= 10:
        curves.set_xscale("log")
    curves.set_xticks(ks, [str(k) for k in ks])
    curves.set(xlabel="cutoff k", ylabel="mean over queries", title="Metrics at cutoff k", ylim=(0, 1.02))
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    _plot_deltas(deltas, metrics)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plot_deltas(ax: Any, metrics: dict[str, Any]) -> None:
    metric = primary_metric(metrics)
    base = metrics["runs"][metrics["baseline"]]["per_query"]
    name = display_name(metric)
    if not metrics["comparisons"]:
        ax.hist([v[metric] for v in base.values()], bins=20, range=(0, 1), color="C0")
        ax.set(xlabel=f"per-query {name}", ylabel="queries", title=f"{metrics['baseline']}: {name} per query")
        return
    for i, c in enumerate(metrics["comparisons"], start=1):
        run = metrics["runs"][c["run"]]["per_query"]
        d = np.sort([run[q][metric] - base[q][metric] for q in run if q in base])[::-1]
        x = np.arange(1, len(d) + 1)
        label = c["run"]
        if len(d):
            up, down = int((d > 0).sum()), int((d < 0).sum())
            label = f"{c['run']} − {c['baseline']}: mean {d.mean():+.3f}, {up} better, {down} worse"
        if len(metrics["comparisons"]) == 1:
            ax.bar(x, d, width=1.0, color=np.where(d >= 0, "tab:green", "tab:red"), label=label)
        else:
            ax.step(x, d, where="mid", color=f"C{i}", label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xlabel="queries, sorted by delta", ylabel=f"Δ {name}", title=f"Per-query {name} delta vs baseline")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
