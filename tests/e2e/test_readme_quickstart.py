"""End to end: README.md's quickstart, run as a newcomer runs it.

The section's fenced blocks are taken from README.md itself: the pairs file (```json), the command
(```bash), the read-back snippet (```python) and the cluster command (the ```bash block with `ray job
submit`). Only the model changes: the hub id becomes a tiny local reranker. The command runs as a
subprocess in a fresh directory with no `RAY_ADDRESS`, so it starts its own local Ray instance (on
loopback, as the session's settings say) exactly as the quickstart promises; the relative `pairs.jsonl` and
`out/` then mean that directory for the driver and its workers alike. The snippet's `ranked` must hold
every pair, ranked 1..n per query, with `CrossEncoder.predict`'s scores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from tests.conftest import REPO

HEADING = "## Quickstart: rerank your own pairs"
RAY = str(Path(sys.executable).parent / "ray")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, as the hub spells a model id


def quickstart_blocks() -> dict[str, str]:
    """The quickstart's fenced blocks by role: pairs, command, snippet, cluster."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)
    by_role: dict[str, list[str]] = {"pairs": [], "command": [], "snippet": [], "cluster": []}
    for lang, body in blocks:
        if lang == "json":
            by_role["pairs"].append(body)
        elif lang == "python":
            by_role["snippet"].append(body)
        elif lang == "bash":
            by_role["cluster" if "ray job submit" in body else "command"].append(body)
    for role, found in by_role.items():
        assert len(found) == 1, f"the quickstart should hold one {role} block, found {len(found)}"
    return {role: found[0] for role, found in by_role.items()}


def argv_of(command: str) -> list[str]:
    """One shell command line (backslash continuations joined, comments dropped) as argv."""
    return shlex.split(command.replace("\\\n", " "), comments=True)


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"the quickstart command has no {flag}: {shlex.join(argv)}"
    return argv[argv.index(flag) + 1]


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path, qwen3_causal, monkeypatch, capsys):
    blocks = quickstart_blocks()
    argv = argv_of(blocks["command"])
    assert argv[:3] == ["python", "-m", "jobs.rerank"], argv
    model = flag_value(argv, "--model")
    assert HUB_ID.fullmatch(model), f"the quickstart should show a hub model id, not {model!r}"
    argv[argv.index("--model") + 1] = str(qwen3_causal)

    rows = [json.loads(line) for line in blocks["pairs"].splitlines() if line.strip()]
    (tmp_path / flag_value(argv, "--pairs")).write_text(blocks["pairs"], encoding="utf-8")
    output = flag_value(argv, "--output")

    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}  # a newcomer's shell: no cluster
    job = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    queries = sorted({r["query_id"] for r in rows})
    assert f"{len(rows)} pairs, {len(rows)} scored, 0 errors, {len(queries)} queries" in job.stdout
    # the output as the job resolved it on the driver: absolute, so workers anywhere write the same place
    assert f"ranked tables: {(tmp_path / output).resolve()}/ranked/" in job.stdout
    assert (tmp_path / output / "manifest.json").is_file()

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    namespace: dict = {}
    exec(compile(blocks["snippet"], "README.md (quickstart)", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    ranked, errors = namespace["ranked"], namespace["errors"]

    assert len(errors) == 0 and list(errors.columns) == ["query_id", "candidate_id", "stage", "error"]
    assert list(ranked.columns[:4]) == ["query_id", "candidate_id", "score", "rank"]
    key = lambda r: (r["query_id"], r["candidate_id"])  # noqa: E731
    assert sorted(map(key, ranked.to_dict("records"))) == sorted(map(key, rows)), "lost or duplicated pairs"

    assert len(printed) == len(queries)
    for line, query in zip(printed, queries, strict=True):
        hits = ranked[ranked["query_id"] == query].sort_values("rank")
        assert hits["rank"].tolist() == list(range(1, len(hits) + 1))
        assert hits["score"].is_monotonic_decreasing
        assert line.startswith(f"{query} [['{hits['candidate_id'].iloc[0]}', ")

    texts = {key(r): (r["query_text"], r["candidate_text"]) for r in rows}
    want = CrossEncoder(str(qwen3_causal)).predict([texts[key(r)] for r in ranked.to_dict("records")])
    np.testing.assert_allclose(ranked["score"].to_numpy(), want, atol=1e-5, rtol=0)


def test_readme_cluster_command_uses_real_flags():
    """The `ray job submit` line: the client's flags exist, and the job's arguments build a valid config."""
    from jobs.rerank import build_parser

    argv = argv_of(quickstart_blocks()["cluster"])
    assert argv[:3] == ["ray", "job", "submit"] and "--" in argv, argv
    split = argv.index("--")
    client = subprocess.run([RAY, "job", "submit", "--help"], capture_output=True, text=True, timeout=120)
    assert client.returncode == 0, client.stderr[-2000:]
    for flag in (a.split("=", 1)[0] for a in argv[3:split] if a.startswith("--")):
        assert flag in client.stdout, f"`ray job submit` has no {flag}"
    job = argv[split + 1 :]
    assert job[:3] == ["python", "-m", "jobs.rerank"], job
    assert HUB_ID.fullmatch(flag_value(job, "--model"))
    parser = build_parser()
    parser.config(parser.parse_args(job[3:])).validate()
