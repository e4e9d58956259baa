"""Where a refresh run lives, how its stages resume, and how a finished run is published.

```
ROOT/LATEST                        the published run id (replaced atomically, only after a run succeeds)
ROOT/score_cache/<reranker key>/   reranker scores across nights (pipelines.refresh.score_cache)
ROOT/runs/<run_id>/
    inputs/corpus/ inputs/queries/ JSON Lines, CSV or BEIR inputs copied to Parquet (pipelines.refresh.inputs)
    embeddings/corpus/ embeddings/queries/   embedding shards (doc_id/query_id, content_hash, model, vector)
    embed_errors/corpus/ embed_errors/queries/
    candidates/                    retrieved pairs, query-clustered, sorted by retrieval_rank
    ranked/ errors/                the rerank output (pipelines.rerank.pipeline)
    eval/                          metrics when qrels are given
    _stages/<stage>.json           a finished stage and its counts: a resumed run skips it
    _started.json                  when the run was first started: LATEST only moves to a later start
    manifest.json                  written last: its presence means the run is complete
```
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pipelines.storage import uris
from pipelines.storage.versioned import VersionedObject
from schemas.tables import InputError

OVERWRITE_SUFFIX = ".overwrite"
STAGES = ("read_inputs", "embed_corpus", "embed_queries", "retrieve", "rerank", "score_cache", "evaluate")


@dataclass(frozen=True)
class RunLayout:
    root: str
    run_id: str
    directory: str | None = None  # the directory under runs/ when not the run id (an overwrite's attempt)

    @property
    def run_dir(self) -> str:
        return uris.join(self.root, "runs", self.directory or self.run_id)

    def overwrite_attempt(self) -> RunLayout:
        """Where `--mode overwrite` builds the run again while the finished one stays in place (and
        published): `runs/<run_id>.overwrite/`, moved over the run only once the new attempt is complete."""
        return RunLayout(self.root, self.run_id, f"{self.run_id}{OVERWRITE_SUFFIX}")

    @property
    def latest(self) -> str:
        return uris.join(self.root, "LATEST")

    @property
    def score_cache(self) -> str:
        return uris.join(self.root, "score_cache")

    @property
    def manifest(self) -> str:
        return uris.join(self.run_dir, "manifest.json")

    def embeddings(self, side: str) -> str:
        return uris.join(self.run_dir, "embeddings", "corpus" if side == "document" else "queries")

    def embed_errors(self, side: str) -> str:
        return uris.join(self.run_dir, "embed_errors", "corpus" if side == "document" else "queries")

    @property
    def candidates(self) -> str:
        return uris.join(self.run_dir, "candidates")

    @property
    def evaluation(self) -> str:
        return uris.join(self.run_dir, "eval")

    @property
    def started(self) -> str:
        return uris.join(self.run_dir, "_started.json")

    def stage_marker(self, stage: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        return uris.join(self.run_dir, "_stages", f"{stage}.json")


def replace_run(attempt: RunLayout) -> RunLayout:
    """Put a complete overwrite attempt in place of its run: the old run directory removed, the attempt
    moved there and its manifest's paths pointed at the new place. Returns the run's own layout. Until this
    runs the old run is untouched (and stays published); a driver killed in between leaves the complete
    attempt, which the next `--mode overwrite` moves into place (`finish_replacing`)."""
    final = RunLayout(attempt.root, attempt.run_id)
    uris.remove(final.run_dir)
    uris.move(attempt.run_dir, final.run_dir)
    manifest = uris.read_json(final.manifest)
    text = json.dumps(manifest).replace(attempt.run_dir + "/", final.run_dir + "/")
    uris.write_json(final.manifest, json.loads(text.replace(f'"{attempt.run_dir}"', f'"{final.run_dir}"')))
    return final


def finish_replacing(layout: RunLayout) -> bool:
    """After a driver died between removing a run and moving its complete overwrite attempt there: finish
    the move. True when it did."""
    attempt = layout.overwrite_attempt()
    if uris.exists(layout.run_dir) or not uris.exists(attempt.manifest):
        return False
    replace_run(attempt)
    return True


def read_latest(root: str) -> str | None:
    """The run id `ROOT/LATEST` names, or None before the first published run."""
    path = uris.join(root, "LATEST")
    if not uris.exists(path):
        return None
    fs, p = uris.filesystem(path)
    run_id = fs.cat_file(p).decode().strip()
    return run_id or None


def publish_latest(root: str, run_id: str) -> str | None:
    """Point `ROOT/LATEST` at `run_id` unless a run started later is published; None when published, else
    why not. A compare-and-swap on the pointer (`VersionedObject`: If-Match on object storage, a lock
    locally): two nights finishing together leave LATEST at the later start, never moving it backwards."""
    pointer = VersionedObject(uris.join(root, "LATEST"))
    for _ in range(20):  # each retry means another night moved LATEST meanwhile: decide again
        current = pointer.read()
        if current is not None:
            why = _stays(root, current[0].decode().strip(), run_id)
            if why is not None:
                return why
        if pointer.write((run_id + "\n").encode(), current[1] if current is not None else None):
            return None
    raise RuntimeError(f"{root}/LATEST kept changing while run {run_id!r} was being published")


def _stays(root: str, latest: str, run_id: str, mine: float | None = None) -> str | None:
    if not latest or latest == run_id:
        return None
    theirs, mine = started_at(RunLayout(root, latest)), mine or started_at(RunLayout(root, run_id))
    if theirs is None or mine is None or mine > theirs:
        return None
    return (
        f"LATEST stays at {latest!r}, which was started after this run; LATEST only moves forward "
        "(this run's output is complete under its run directory)"
    )


def finished(layout: RunLayout, stage: str, config_key: str) -> dict | None:
    """The recorded result of `stage` when this run already finished it with the same configuration."""
    marker = layout.stage_marker(stage)
    if not uris.exists(marker):
        return None
    record = uris.read_json(marker)
    if record.get("config_key") != config_key:
        raise InputError(
            f"run {layout.run_id!r} at {layout.run_dir} was started with a different configuration; "
            "resume it with the same flags or choose another --run-id"
        )
    return record["result"]


def mark_finished(layout: RunLayout, stage: str, config_key: str, result: dict) -> None:
    uris.write_json(layout.stage_marker(stage), {"stage": stage, "config_key": config_key, "result": result})


def mark_started(layout: RunLayout) -> float:
    """Record when this run was first started (kept across resumes); returns that time (epoch seconds)."""
    if uris.exists(layout.started):
        return float(uris.read_json(layout.started)["started_at"])
    now = time.time()
    uris.write_json(
        layout.started, {"started_at": now, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    )
    return now


def started_at(layout: RunLayout) -> float | None:
    return float(uris.read_json(layout.started)["started_at"]) if uris.exists(layout.started) else None


def publish_decision(layout: RunLayout) -> str | None:
    """None when this run may become LATEST now; else why not (`publish_latest` decides again, atomically).
    LATEST only moves forward: a run first started before the published one (an older night resumed late)
    never replaces it. Start times come from each run's driver clock."""
    return _stays(layout.root, read_latest(layout.root) or "", layout.run_id, started_at(layout))
