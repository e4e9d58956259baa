"""Every job's flags come from its config's fields: each setting is defined once (its spec), every flag's
default is its field's, `--help` lists every field, and the refresh offers every reranker setting of
`jobs.rerank` under `--rerank-*`. Bad values exit 2 with one line naming the flag the user typed."""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
import typing
from dataclasses import MISSING, fields, is_dataclass

import pytest

from actors.embedder import EmbedderSpec
from actors.media.loader import MediaSpec
from actors.pool import PoolSpec
from actors.reranker.spec import RerankerSpec
from jobs.cli import SettingsParser

JOBS = ["rerank", "refresh", "evaluate", "benchmark", "demo", "build_demo", "train"]
SPECS = (RerankerSpec, EmbedderSpec, MediaSpec, PoolSpec)


def field_default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def expected_flags(cls: type, prefix: str = "", owner: type | None = None, given=None):
    """(flag, default, spec class that owns the field) for every leaf setting of `cls`, by the naming rule
    the README documents: `--` + the nested spec's prefix + the field's flag name. A setting's default is
    its spec's own; only a field the spec leaves required may take a value from the job (`given`)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind, own = hints[f.name], field_default(f)
        if given is not None and own is MISSING:
            own = getattr(given, f.name)
        if is_dataclass(kind):
            nested = own if own is not MISSING else None
            yield from expected_flags(kind, prefix + (f.metadata.get("prefix") or ""), kind, nested)
            continue
        name = f.metadata.get("flag") or f.name.replace("_", "-")
        yield "--" + prefix + name, own, owner or cls


def parser_of(job: str) -> SettingsParser:
    parser = importlib.import_module(f"jobs.{job}").build_parser()
    assert isinstance(parser, SettingsParser), f"jobs.{job} builds its flags by hand"
    return parser


@pytest.mark.parametrize("job", JOBS)
def test_every_flag_default_is_its_fields_and_help_lists_every_field(job):
    parser = parser_of(job)
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    help_text = parser.format_help()
    for flag, default, _owner in expected_flags(parser.config_cls):
        assert flag in actions, f"jobs.{job}: no {flag}"
        assert flag in help_text, f"jobs.{job} --help does not list {flag}"
        action = actions[flag]
        if default is MISSING:
            assert action.required, f"jobs.{job} {flag} has no default, so it must be required"
        else:
            assert action.default == default, f"jobs.{job} {flag}: default {action.default!r} != {default!r}"
    generated = {"--ray-address", "--progress-interval", "--help", "-h", "--version"}
    for flag, default, _ in expected_flags(parser.config_cls):
        generated |= {flag, "--no-" + flag[2:]} if default is True else {flag}
    assert set(actions) <= generated, f"jobs.{job} has hand-made flags {set(actions) - generated}"


def test_specs_reach_the_jobs_that_use_them():
    owners = {job: {owner for _, _, owner in expected_flags(parser_of(job).config_cls)} for job in JOBS}
    assert {RerankerSpec, PoolSpec, MediaSpec} <= owners["rerank"]
    assert set(SPECS) <= owners["refresh"]
    assert {RerankerSpec, PoolSpec} <= owners["benchmark"]


def test_refresh_has_every_rerank_flag_under_its_prefix():
    rerank = {
        flag: owner
        for flag, _, owner in expected_flags(parser_of("rerank").config_cls)
        if flag not in ("--pairs", "--run", "--depth")  # the refresh makes its pairs by its own retrieval
    }
    refresh = {flag for flag, _, _ in expected_flags(parser_of("refresh").config_cls)}
    for flag, owner in rerank.items():
        want = "--rerank-" + flag[2:] if owner in (RerankerSpec, PoolSpec) else flag
        assert want in refresh, f"jobs.rerank {flag} has no jobs.refresh {want}"


def test_one_output_flag_across_jobs():
    for job in JOBS:
        flags = {flag for flag, _, _ in expected_flags(parser_of(job).config_cls)}
        assert "--output" in flags and not flags & {"--out", "--output-root", "--output-dir"}, job


def test_comma_lists_and_booleans_parse(tmp_path):
    parser = parser_of("rerank")
    argv = ["--pairs", "p", "--model", str(tmp_path), "--output", "o", "--allowed-schemes", "file, s3"]
    cfg = parser.config(parser.parse_args([*argv, "--fp32-head", "--trust-remote-code"]))
    assert cfg.media.allowed_schemes == ("file", "s3")
    assert cfg.reranker.fp32_head and cfg.reranker.trust_remote_code and not cfg.reranker.prefix_reuse
    assert cfg.reranker == RerankerSpec(model=str(tmp_path), fp32_head=True, trust_remote_code=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--actors", "0"], "--actors: must be >= 1, got 0"),
        (["--batch-tokens", "0"], "--batch-tokens: must be >= 1, got 0"),
        (["--max-length", "4"], "--max-length: must be >= 8, got 4"),
        (["--max-media-bytes", "-1"], "--max-media-bytes: must be > 0, got -1"),
        (["--allowed-schemes", "file,nosuch"], "--allowed-schemes: 'nosuch' is not a known scheme"),
        (["--top-k", "0"], "--top-k: must be >= 1, got 0"),
        (["--run-id", ".x"], "--run-id: '.x': use a plain name"),
        (["--model", "./nope"], "--model: model './nope' is not a directory"),
    ],
)
def test_rerank_bad_values_exit_2_naming_the_flag(tmp_path, capsys, change, message):
    from jobs import rerank

    argv = ["--pairs", str(tmp_path), "--model", str(tmp_path), "--output", str(tmp_path / "out"), *change]
    assert rerank.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {err[7:]}" and message in err and "\n" not in err, err


@pytest.mark.parametrize(
    ("held", "change", "message"),
    [
        ("manifest.json", [], "already holds the complete run 'r1'; pass --run-id r1 to get it back"),
        ("manifest.json", ["--run-id", "r2"], "already holds the complete run 'r1'; pass --run-id r1"),
        ("manifest.json", ["--run-id", "r1", "--mode", "error"], "already holds the complete run 'r1'"),
        ("_run.json", ["--mode", "error"], "already holds a run (--mode error); choose another --output"),
    ],
)
def test_rerank_refuses_a_held_output_before_starting_ray(
    tmp_path, capsys, monkeypatch, held, change, message
):
    """Re-running a finished command fails at once, in one line, without the seconds a Ray start costs
    (`connect` is replaced by one that fails the test: the refusal must come before it)."""
    from jobs import ray_session, rerank
    from pipelines.storage import uris
    from tests.pairs_data import adversarial_pairs, write_shards

    def connect(*_args, **_kwargs):
        raise AssertionError("connected to Ray before refusing the output")

    monkeypatch.setattr(ray_session, "connect", connect)
    pairs = write_shards(adversarial_pairs(2, 3), tmp_path / "pairs", shards=1)
    out = tmp_path / "out"
    uris.write_json(str(out / held), {"run_id": "r1"})
    argv = ["--pairs", str(pairs), "--model", str(tmp_path), "--output", str(out), *change]
    assert rerank.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_refresh_refuses_an_existing_run_id_before_starting_ray(tmp_path, capsys, monkeypatch):
    """`--mode error` on a `--run-id` the root already holds: one line, before any Ray start."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import ray_session, refresh

    def connect(*_args, **_kwargs):
        raise AssertionError("connected to Ray before refusing the run id")

    monkeypatch.setattr(ray_session, "connect", connect)
    pq.write_table(pa.table({"doc_id": ["d0"], "doc_text": ["a document"]}), tmp_path / "corpus.parquet")
    pq.write_table(pa.table({"query_id": ["q0"], "query_text": ["a query"]}), tmp_path / "queries.parquet")
    root = tmp_path / "root"
    (root / "runs" / "r1").mkdir(parents=True)
    argv = ["--corpus", str(tmp_path / "corpus.parquet"), "--queries", str(tmp_path / "queries.parquet")]
    argv += ["--embed-model", str(tmp_path), "--rerank-model", str(tmp_path), "--output", str(root)]
    assert refresh.main([*argv, "--run-id", "r1", "--mode", "error"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "runs/r1 already exists (--mode error); choose another --run-id" in err, err


RERANK_REQUIRED = ["--pairs", "p.parquet", "--model", "m", "--output", "out"]


def refused(job: str, argv: list[str], capsys) -> str:
    """The one stderr line of a command line the parser refuses with exit code 2."""
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"jobs.{job}").main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and err.startswith("error: "), err
    return err


def test_an_abbreviated_flag_is_refused_not_expanded(capsys):
    """`--batch 32` once meant `--batch-tokens 32`; a flag is now spelled out or refused."""
    err = refused("rerank", [*RERANK_REQUIRED, "--batch", "32"], capsys)
    assert "unrecognized argument --batch; did you mean --batch-tokens?" in err, err
    err = refused("rerank", [*RERANK_REQUIRED, "--batch=32"], capsys)
    assert "unrecognized argument --batch; did you mean --batch-tokens?" in err, err


@pytest.mark.parametrize(
    ("job", "typed", "meant"),
    [
        ("rerank", "--batch-size", "--batch-tokens"),
        ("rerank", "--max-eror-rate", "--max-error-rate"),
        ("refresh", "--batch-tokens", "--embed-batch-tokens or --rerank-batch-tokens"),
        ("refresh", "--model", "--embed-model or --rerank-model"),
        ("evaluate", "--runs", "--run"),
        ("benchmark", "--num-pair", "--num-pairs"),
    ],
)
def test_an_unknown_flag_names_the_closest_real_one(capsys, job, typed, meant):
    err = refused(job, [typed, "1"], capsys)
    assert f"unrecognized argument {typed}; did you mean {meant}?" in err, err


def test_an_unknown_flag_is_reported_before_missing_required_ones(capsys):
    err = refused("rerank", ["--batch", "32"], capsys)
    assert "--batch-tokens" in err and "required" not in err and "--pairs" not in err, err
    err = refused("rerank", ["--nosuch"], capsys)
    assert err.startswith("error: unrecognized argument --nosuch") and "required" not in err, err


def test_values_that_look_like_flags_are_not_unknown_flags():
    parser = parser_of("rerank")
    argv = [*RERANK_REQUIRED, "--max-restarts", "-1", "--prompt", "- a dash, then words", "--top-k=3"]
    cfg = parser.config(parser.parse_args(argv))
    assert (cfg.pool.max_restarts, cfg.reranker.prompt, cfg.top_k) == (-1, "- a dash, then words", 3)


@pytest.mark.parametrize("job", JOBS)
def test_help_shows_readable_value_names_and_every_field_under_a_heading(job):
    parser = parser_of(job)
    help_text = parser.format_help()
    assert "__" not in help_text, f"jobs.{job} --help shows an internal name: {help_text}"
    generic = {opt for a in parser._optionals._group_actions for opt in a.option_strings}
    assert generic <= {"-h", "--help", "--version"}, (
        f"jobs.{job}: {sorted(generic - {'-h', '--help', '--version'})} under the generic 'options' "
        f"heading; list the field in jobs/{job}.py GROUPS"
    )


def test_metavars_name_what_the_value_is():
    usage = " ".join(parser_of("rerank").format_usage().split())
    for shown in (
        "--pairs URI",
        "--output URI",
        "--model MODEL",
        "--actors N",
        "--batch-tokens N",
        "--max-error-rate RATE",
        "--media-timeout SECONDS",
        "--max-media-bytes BYTES",
        "--run-id ID",
        "--cpus-per-actor X",
        "--column COLUMN=INPUT",  # a setting's own metavar wins
    ):
        assert shown in usage, f"{shown!r} not in {usage}"
    assert "--output ROOT" in parser_of("refresh").format_usage()
    assert "--output DIR" in parser_of("build_demo").format_usage()


@pytest.mark.parametrize("job", JOBS)
def test_version_prints_the_installed_package_version(capsys, job):
    with pytest.raises(SystemExit) as exit_:
        parser_of(job).parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ray-rerank {importlib.metadata.version('ray-rerank')}"


@pytest.mark.parametrize("job", JOBS)
def test_help_ends_with_examples_that_parse(job):
    """Every example in `--help` is a command line the job accepts: its flags exist, its values parse."""
    parser = parser_of(job)
    help_text = parser.format_help()
    assert parser.examples and "\nexamples:\n" in help_text, f"jobs.{job} --help has no example"
    for example in parser.examples:
        assert "  " + example in help_text
        words = shlex.split(example.replace("\\\n", " "), comments=True)
        start = words.index(f"jobs.{job}") + 1
        assert words[start - 3 : start - 1] == ["python", "-m"], example
        parser.config(parser.parse_args(words[start:]))


@pytest.mark.parametrize("job", ["rerank", "refresh"])
def test_the_cluster_jobs_show_the_ray_job_submit_form(job):
    submit = f"ray job submit --working-dir . -- python -m jobs.{job} "
    assert any(example.startswith(submit) for example in parser_of(job).examples), job


def test_local_paths_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    """Ray workers do not share the driver's working directory (a job joining a running instance), so a
    relative output, and a relative input that exists here, reach them absolute; hub ids and URIs do not
    change."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    parser = importlib.import_module("jobs.rerank").build_parser()
    argv = ["--pairs", "pairs.jsonl", "--output", "out/", "--model", "Qwen/Qwen3-Reranker-0.6B"]
    cfg = parser.config(parser.parse_args(argv))
    assert cfg.pairs == str(tmp_path / "pairs.jsonl")
    assert cfg.output == str(tmp_path / "out")
    assert cfg.reranker.model == "Qwen/Qwen3-Reranker-0.6B"
    argv = ["--pairs", "s3://b/pairs/", "--output", "s3://b/out/", "--model", "s3://b/model/"]
    cfg = parser.config(parser.parse_args(argv))
    assert (cfg.pairs, cfg.output, cfg.reranker.model) == ("s3://b/pairs/", "s3://b/out/", "s3://b/model/")
