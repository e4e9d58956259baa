"""One rerank run as a job: identity, one driver, resumable scoring, ranking, the manifest.

1. The run's identity (model fingerprint and revision, every setting that changes a score, top-k, the input
   files with sizes and modification times) is checked against an earlier attempt of the same run id, and
   an output holding a complete run is returned only for the same run id and identity (`--mode`).
2. A lease (`pipelines.runs.lease`) keeps a second driver off the same output.
3. Each scoring actor commits every block it scores as a piece (`pipelines.runs.checkpoint`) as soon as it is
   scored: an attempt scores only the rows no committed piece holds, so a killed driver loses at most the
   blocks in flight.
4. Ranking and the errors table read the committed pieces; `manifest.json` is written last, then the
   checkpoint is removed (a kill in between leaves a complete run, not a marker over partial data).
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import asdict, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from actors.model_source import model_changed_in
from actors.reranker.quarantine import clear as clear_markers
from actors.reranker.quarantine import count_faults, describe_stuck
from actors.reranker.truncation import truncation_warning
from actors.reranker.worker import RerankWorker
from pipelines.rerank.config import OutputLayout, RerankConfig
from pipelines.rerank.inputs import PairsPlan, pairs_files, plan_inputs
from pipelines.rerank.pipeline import attempts_dir, block_stats, rank_partitions, rank_scored, score_pairs
from pipelines.rerank.rank import (
    edges_are_apart,
    only_scored,
    rank_clustered,
    rank_group,
    read_for_ranking,
    to_errors,
)
from pipelines.rerank.read import read_keyed_pairs
from pipelines.rerank.trec import TREC_FILE, write_run_file
from pipelines.rerank.validate import instruction_digest
from pipelines.runs import progress
from pipelines.runs.checkpoint import Checkpoint, Resumed, commit_piece
from pipelines.runs.info import library_versions, model_fingerprint, pinned, resolved_dtype
from pipelines.runs.lease import Lease, changed_fields, check_identity, input_stats
from pipelines.storage import uris
from pipelines.storage.shared import require_shared
from pipelines.storage.tables import read_files, write_file
from schemas import columns as c
from schemas.tables import ERRORS_SCHEMA, InputError, JobFailed

# RerankerSpec fields that change a score (batch_tokens and device do not).
SCORE_SETTINGS = (
    "prompt",
    "prompt_name",
    "max_length",
    "truncate",
    "label",
    "score_path",
    "fp32_head",
    "prefix_reuse",
    "attn_implementation",
    "trust_remote_code",
)


def identity_fields(cfg: RerankConfig, files: list[str], plan: PairsPlan | None = None) -> dict:
    """Everything that decides a run's output, by name (a changed one is named in the error). With `plan`,
    the pairs' instructions too (a digest of the `instruction` column), so a changed one is named."""
    spec = cfg.reranker
    model = model_fingerprint(spec.model, spec.revision)
    return {
        "model": [spec.model, model.get("revision"), model.get("fingerprint")],
        **{name: getattr(spec, name) for name in SCORE_SETTINGS},
        "dtype": resolved_dtype(spec, cfg.pool),
        **cfg.ranking_identity(),  # --top-k, --fuse
        "columns": list(cfg.columns or ()),
        "keep_columns": list(cfg.keep_columns),
        "inputs": input_stats(files),
        "instructions": instruction_digest(plan.source) if plan is not None else None,
        "media": cfg.media.score_settings(),
        "media_limits": cfg.media.row_settings(),
    }


def run_rerank(
    cfg: RerankConfig,
    worker_cls=RerankWorker,
    extra_stages=(),
    *,
    manifest_name: str = "manifest.json",
    keep_scored: bool = False,
) -> dict:
    """Run (or resume) one rerank. Returns the manifest. Assumes `ray.init` was called.

    A job that composes this one (the nightly refresh) passes `manifest_name` to keep `manifest.json`,
    written last, for its own manifest, and `keep_scored` to read every scored pair from the checkpoint
    (internal columns included) before removing it itself."""
    cfg.validate()
    require_shared(cfg.output)  # a local output on a cluster of several nodes: every node must see it
    layout = OutputLayout(cfg.output, manifest_name)
    plan = plan_inputs(cfg)
    files = plan.files
    cfg = replace(cfg.with_fusion_weight(), reranker=pinned(cfg.reranker))  # the weight; a hub id's commit
    fields = identity_fields(cfg, files, plan)
    run_id = cfg.run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    complete = _complete_run(layout, cfg, run_id, fields)
    if complete is not None:
        return complete
    with Lease(cfg.output, ttl_s=cfg.lease_ttl_s, heartbeat_s=cfg.lease_heartbeat_s) as lease:
        if cfg.mode == "overwrite":
            _wipe(layout)
        else:  # checked again under the lease: another driver may have started since
            held_run(cfg, layout)
        resumed = check_identity(cfg.output, run_id, fields)
        manifest = _run(cfg, layout, run_id, fields, plan, resumed, worker_cls, extra_stages, lease)
        uris.write_json(layout.manifest, manifest)
        if not keep_scored:
            Checkpoint(cfg.output).remove()
        uris.remove(layout.staged_pairs)
        uris.remove(uris.join(cfg.output, "_run.json"))
    return manifest


def held_run(cfg: RerankConfig, layout: OutputLayout | None = None) -> dict | None:
    """The output checks that need no cluster (a job makes them before it starts one). Returns the manifest
    of the complete run at the output when `--run-id` asks for that very run, None when there is none (or
    `--mode overwrite` will replace it); any other complete run is refused, and `--mode error` refuses any
    run there, complete or not."""
    layout = layout or OutputLayout(cfg.output)
    if cfg.mode == "overwrite":
        return None
    if uris.exists(layout.manifest):
        manifest = uris.read_json(layout.manifest)
        held = manifest.get("run_id")
        if cfg.run_id is None or held != cfg.run_id or cfg.mode == "error":
            raise InputError(
                f"{cfg.output} already holds the complete run {held!r}; pass --run-id {held} to get it back, "
                "--mode overwrite to replace it, or choose another --output"
            )
        return manifest
    if cfg.mode == "error" and uris.exists(uris.join(cfg.output, "_run.json")):
        raise InputError(f"{cfg.output} already holds a run (--mode error); choose another --output")
    return None


def _complete_run(layout: OutputLayout, cfg: RerankConfig, run_id: str, fields: dict) -> dict | None:
    """The manifest of a complete run at `layout` when it is this very run; None when there is none (or
    `--mode overwrite` replaces it). Any other complete run is an error naming the difference."""
    if cfg.mode == "overwrite":
        if uris.exists(layout.manifest):
            _wipe(layout)
        return None
    manifest = held_run(cfg, layout)
    if manifest is None:
        return None
    changed = changed_fields(manifest.get("identity", {}), fields)
    if changed:
        raise InputError(
            f"run {run_id!r} at {cfg.output} is complete with a different {', '.join(changed)}; pass "
            "--mode overwrite to redo it, or choose another --run-id"
        )
    return {**manifest, "resumed": "already complete"}


def _run(cfg, layout, run_id, fields, plan: PairsPlan, resumed, worker_cls, extra_stages, lease) -> dict:
    files = pairs_files(plan, layout)  # Parquet: the input, or a copy of JSON Lines / CSV pairs
    ckpt = Checkpoint(cfg.output)
    clear_markers(attempts_dir(cfg.output))  # blocks in flight when an earlier driver died start afresh
    if not resumed:
        ckpt.remove()  # pieces of an attempt whose identity record is gone cannot be trusted
    resumed_from = ckpt.resume()  # listed fresh; unreadable pieces removed, their pairs scored again
    committed = resumed_from.keys
    total = uris.count_rows(files)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if len(committed) < total:
        with progress.stage("score", f"{total - len(committed)} of {total} pairs to score"):
            fence = (cfg.output, lease.token, lease.generation)  # pieces commit only under this lease
            commit = functools.partial(commit_piece, directory=ckpt.directory, stats=block_stats, fence=fence)
            fingerprint = fields["model"][2]  # each actor checks the model it loaded against it
            pairs = read_keyed_pairs(files, committed)
            ds = score_pairs(pairs, cfg, plan, worker_cls, extra_stages, commit, fingerprint)
            t0 = time.perf_counter()
            # Progress is what the actors report committed (one count per block), never a listing of the
            # output, which on an object store costs requests and lags behind the commits.
            done = progress.Counter(len(committed))
            with progress.Ticker("pairs scored", total, done.value):
                try:
                    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                        done.add(pc.sum(block.column("committed")).as_py() or 0)
                except Exception as exc:
                    if (changed := model_changed_in(exc)) is not None:
                        raise InputError(changed) from exc
                    stuck = describe_stuck(attempts_dir(cfg.output))
                    if stuck is None:
                        raise
                    raise JobFailed(stuck) from exc
            timings["score_s"] = time.perf_counter() - t0
    pieces = ckpt.pieces()  # listed fresh, once, after every actor's commit returned
    faults = count_faults(attempts_dir(cfg.output))  # what actor and node losses cost this attempt
    missing, resumed_from.pairs_duplicated = ckpt.coverage(
        pieces, [uris.count_rows([f]) for f in files], block_stats
    )
    if missing:
        raise RuntimeError(f"checkpoint {ckpt.directory} misses {missing} of {total} pairs")

    with progress.stage("rank"):
        t0 = time.perf_counter()
        ranking = rank_outputs(pieces, layout, cfg, total, plan.keep)
        timings["rank_write_s"] = time.perf_counter() - t0
    trec_run = write_run_file(cfg.trec_run, layout.root, run_id)  # before the manifest, which lists it
    stats = ckpt.stats(pieces)
    if warning := truncation_warning(stats.get("truncated", 0), stats.get("scored", 0), cfg.reranker):
        progress.logger.warning(warning)
    queries, ranked_rows = _ranked_counts(layout.ranked)
    timings["total_s"] = time.perf_counter() - started
    return {
        **_manifest(cfg, run_id, fields, plan.files, stats, queries, ranked_rows, timings, resumed_from),
        "ranking": ranking,
        "faults": faults,
        "outputs": {"ranked": layout.ranked, "errors": layout.errors, "trec_run": trec_run},
    }


def rank_outputs(pieces: list[str], layout: OutputLayout, cfg, total: int, keep) -> dict:
    """Write ranked/ and errors/ from the committed pieces, by the cheapest exact path: on the driver up
    to `rank_on_driver_rows` pairs; above it, in one task per piece when the input is query-clustered
    (`pipelines.rerank.rank`); else through a hash shuffle on `query_id`. Returns the path taken."""
    uris.remove(layout.ranked)
    uris.remove(layout.errors)
    if total <= cfg.rank_on_driver_rows:
        _rank_on_driver(_read_pieces(pieces, keep), layout, cfg, keep)
        return {"path": "driver"}
    edges_dir = uris.join(layout.root, "_edges")
    uris.remove(edges_dir)
    dirs = {"ranked": layout.ranked, "errors": layout.errors, "edges": edges_dir}
    try:
        found = rank_clustered(pieces, dirs, cfg.top_k, keep, cfg.fusion)
        if found is not None and _rank_edges(*found, layout, cfg, keep):
            ranking = {"path": "clustered", "set_aside_rows": found[1]}
        else:
            uris.remove(layout.ranked)
            uris.remove(layout.errors)
            fs_out = uris.pyarrow_filesystem(cfg.output)
            scored = ray.data.read_parquet(pieces, filesystem=fs_out)
            parts = rank_partitions(total)
            result = rank_scored(scored, top_k=cfg.top_k, keep=keep, fusion=cfg.fusion, num_partitions=parts)
            result.errors.write_parquet(layout.errors, filesystem=fs_out)
            result.ranked.write_parquet(layout.ranked, filesystem=fs_out)
            ranking = {"path": "shuffle"}
    finally:
        uris.remove(edges_dir)
    if not uris.exists(layout.errors):  # no error row anywhere: one empty file, as on the driver
        write_file(ERRORS_SCHEMA.empty_table(), layout.errors, "part-0.parquet")
    return ranking


def _rank_edges(local: set, edge_rows: int, files: list[str], layout, cfg, keep) -> bool:
    """Rank the rows the clustered path set aside (their error rows are written already): on the driver
    when few, else through a shuffle of those rows alone. False when one of their queries was also ranked
    by a piece's task (the input is not clustered after all); nothing is written then."""
    if not files:
        return True
    if edge_rows <= cfg.rank_on_driver_rows:
        table = _read_pieces(files, keep)
        if not edges_are_apart(local, table.column(c.QUERY_ID)):
            return False
        _rank_on_driver(table, layout, cfg, keep, errors=False, name="part-edges.parquet")
        return True
    if not edges_are_apart(local, read_files(files, [c.QUERY_ID]).column(c.QUERY_ID)):
        return False
    fs_out = uris.pyarrow_filesystem(cfg.output)
    rows, parts = ray.data.read_parquet(files, filesystem=fs_out), rank_partitions(edge_rows)
    edges = rank_scored(rows, top_k=cfg.top_k, keep=keep, fusion=cfg.fusion, num_partitions=parts)
    edges.ranked.write_parquet(layout.ranked, filesystem=fs_out)
    return True


def _read_pieces(pieces: list[str], keep) -> pa.Table | None:
    """The pieces' rows, with only the columns ranking and the errors table need."""
    tables = [read_for_ranking(uri, keep) for uri in pieces]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _rank_on_driver(
    scored: pa.Table | None, layout, cfg, keep, errors: bool = True, name: str = "part-0.parquet"
) -> None:
    """Rank scored rows in this process (`cfg`'s top-k and fusion): one ranked file, and with `errors` one
    errors file."""
    if errors:
        table = to_errors(scored) if scored is not None else ERRORS_SCHEMA.empty_table()
        write_file(table, layout.errors, "part-0.parquet")
    ranked = only_scored(scored, keep) if scored is not None else None
    if ranked is not None and ranked.num_rows:
        write_file(rank_group(ranked, cfg.top_k, keep, cfg.fusion), layout.ranked, name)


def _ranked_counts(ranked: str) -> tuple[int, int]:
    """(queries, rows) in ranked/: rows from the files' footers, queries from their `rank` column alone
    (4 bytes a row, read here rather than paying a cluster round trip). A run in which every pair failed
    writes no ranked file: the folder is still created, empty."""
    fs, path = uris.fresh(ranked)
    fs.makedirs(path, exist_ok=True)
    queries = rows = 0
    for file in (p for p in fs.find(path) if p.endswith(".parquet")):
        with fs.open(file, "rb") as f:
            ranks = pq.read_table(f, columns=[c.RANK]).column(c.RANK)
        rows += len(ranks)
        queries += pc.sum(pc.equal(ranks, 1).cast(pa.int64())).as_py() or 0
    return queries, rows


def _manifest(cfg, run_id, fields, files, stats, queries, ranked_rows, timings, resumed: Resumed) -> dict:
    resumed_pairs = len(resumed.keys)
    rows, scored = stats.get("rows", 0), stats.get("scored", 0)
    tokens, padded = stats.get("tokens", 0), stats.get("padded_tokens", 0)
    unsorted = stats.get("unsorted_padded_tokens", 0)
    score_s = timings.get("score_s")
    failed = rows - scored
    error_rate = failed / rows if rows else 0.0
    this_run = rows - resumed_pairs
    return {
        "run_id": run_id,
        "model": {
            "id": cfg.reranker.model,
            **model_fingerprint(cfg.reranker.model, cfg.reranker.revision),
            "trust_remote_code": cfg.reranker.trust_remote_code,
        },
        "identity": fields,
        "config": asdict(cfg),
        "input_files": files,
        "counts": {
            "pairs_in": rows,
            "scored": scored,
            "failed": failed,
            "queries": queries,
            "ranked_rows": ranked_rows,
            "pairs_resumed": resumed_pairs,
            "pairs_scored_this_run": this_run,
            "pieces_unreadable": resumed.pieces_unreadable,
            "pairs_rescored": resumed.pairs_rescored,
            "pairs_duplicated": resumed.pairs_duplicated,
            "pairs_truncated": stats.get("truncated", 0),
        },
        "errors": {
            "error_rate": error_rate,
            "max_error_rate": cfg.max_error_rate,
            "exceeded": error_rate > cfg.max_error_rate,
        },
        "tokens": {
            "real": tokens,
            "padded": padded,
            "padding_efficiency": tokens / padded if padded else None,
            "unsorted_fixed_batches_padded": unsorted,
            "unsorted_fixed_batches_padding_efficiency": tokens / unsorted if unsorted else None,
        },
        "timings": timings,
        "scoring_actor": actor_time(stats, cfg.pool.actors, resumed_pairs),
        "throughput": {
            "pairs_per_s": this_run / score_s if score_s and this_run else None,
            "tokens_per_s": tokens / score_s if score_s and not resumed_pairs else None,
        },
        "resumed_scoring": resumed_pairs > 0,
        "versions": library_versions(),
    }


def actor_time(stats: dict, actors: int, resumed_pairs: int = 0) -> dict:
    """Where the scoring actors' time went: preprocessing (only when the actors preprocess their own
    blocks, `--preprocess-tasks 0`), collating micro-batches, the forward (on an accelerator: the time it
    was busy), writing scores back; seconds and shares. `forward_busy` is the forward's share of
    the wall time from the first forward to the end of the last, over all actors: near 1 means the
    accelerator never waited for input (None after a resume, whose window spans the interruption)."""
    parts = {name: stats.get(name, 0.0) for name in c.ACTOR_TIME}
    spent = sum(parts.values())
    shares = {name.replace("_s", "_share"): (v / spent if spent else None) for name, v in parts.items()}
    start, end = stats.get("min_forward_start"), stats.get("max_forward_end")
    window = end - start if start is not None and end is not None and end > start else None
    busy = parts["forward_s"] / (window * actors) if window and not resumed_pairs else None
    return {**parts, **shares, "forward_window_s": window, "forward_busy": busy}


def _wipe(layout: OutputLayout) -> None:
    for path in (
        layout.manifest,
        layout.ranked,
        layout.errors,
        layout.staged_pairs,
        uris.join(layout.root, TREC_FILE),
        uris.join(layout.root, "_run.json"),
    ):
        uris.remove(path)
    Checkpoint(layout.root).remove()
