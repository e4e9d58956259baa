"""Blocks whose scoring kills the actor (out of memory, a native crash): found, bisected, and a pair turned
into an error row only on evidence.

Before an actor scores a block it writes a marker (`<output>/_scored/.attempts/<block>.json`, the block
named by a hash of its row keys) and removes it when the block is done. A marker found on arrival means an
earlier attempt of this very block died with its actor (Ray restarts the actor and retries the block, within
`--max-restarts` / `--max-task-retries`). Such a block is scored in parts, the marker saying which part is
being tried and keeping the scores of the parts that finished: a part that dies again is halved on the next
attempt. A single pair is convicted (written as an error row) only after it killed an actor twice while
tried alone (`CONVICT_AFTER`): one death can be the cluster's (a killed driver, an OOM kill caused by
something else), not the pair's, so an unrelated death of a one-row block's actor costs a retry, not the pair.

A marker names the node its actor ran on. A death whose node is gone from the cluster (a preempted or
crashed machine, `ray.nodes()` says it is no longer alive) is the cluster's, not the block's: the same part
is tried again, and the death is neither counted against the block's budget nor evidence against a pair.
So Ray may restart the actor and retry its blocks generously (`actors.pool.PoolSpec.actor_options`: Ray's
own counters cannot tell a lost node from a killer pair), and the budget is counted here: a block whose
actors died `budget` times on live nodes fails the job (`BlockKeepsKilling`). A block of n pairs with one
killer needs about log2(n) + 2 attempts; when the budget runs out first, `describe_stuck` names the first
pairs of each block that died at least once. Markers of blocks that were merely in flight when a driver died
carry no death and are cleared when the run resumes (`clear`).

Each arrival at a block whose earlier attempt died leaves a fault record (`<markers>/.faults/`): the run's
manifest counts them (`count_faults`: restarts of the scoring actor mid-block, and how many of those were a
lost node's).
"""

from __future__ import annotations

import json
import posixpath
import uuid

import fsspec
import numpy as np

from actors.rows import key_digest


def _fs(uri: str):
    return fsspec.core.url_to_fs(uri)


def _exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def _read(uri: str) -> dict:
    fs, path = _fs(uri)
    with fs.open(path, "r") as f:
        return json.load(f)


def _write(uri: str, payload: dict) -> None:
    """Temp file then rename: a reader never sees half a marker."""
    fs, path = _fs(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path + ".tmp", "w") as f:
        json.dump(payload, f)
    fs.mv(path + ".tmp", path)


def current_node() -> str | None:
    """The Ray node this process runs on; None outside Ray (markers then carry no node)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def node_alive(node_id: str | None) -> bool:
    """Whether the cluster still holds `node_id` alive. A marker without a node (written outside Ray) is
    taken as from a live node: its death counts, as it always did."""
    if node_id is None:
        return True
    import ray

    if not ray.is_initialized():
        return True
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


class BlockKeepsKilling(RuntimeError):
    """A block whose scoring killed live actors more often than its budget allows: the job stops and
    `describe_stuck` names it."""


KILLED = "killed its scoring actor on every attempt (out of memory or a crash), isolated by bisection"
CONVICT_AFTER = 2  # deaths of an actor while this pair alone was being scored


class Quarantine:
    """The marker of one block (`directory` None: no markers, no bisection)."""

    def __init__(
        self,
        directory: str | None,
        keys: np.ndarray,
        ids: list[str],
        budget: int = -1,
        alive=node_alive,
        node: str | None = None,
    ):
        """`budget`: deaths on live nodes the block may cause (-1: no limit); `alive(node_id)`: whether a
        node is still in the cluster; `node`: this actor's node (default: asked of Ray)."""
        self.path = None
        self.directory = directory
        if directory is not None and len(keys):
            self.path = f"{directory.rstrip('/')}/{key_digest(keys)}.json"
        self.n = len(keys)
        self.state = _read(self.path) if self.path and _exists(self.path) else None
        self.ids = ids
        self.budget = budget
        self.node = node if node is not None else (current_node() if self.path else None)
        # The attempt that left the marker died with its actor: on a node that is gone, or on a live one.
        self.node_lost = self.state is not None and not alive(self.state.get("node"))

    @property
    def suspect(self) -> bool:
        """An earlier attempt of this block died."""
        return self.state is not None

    def start(self) -> None:
        """Mark the block as being scored whole."""
        if self.path:
            _write(
                self.path,
                {"first_ids": self.ids[:5], "pairs": self.n, "trying": [0, self.n], "node": self.node},
            )

    def parts(self):
        """For a suspect block: yield (lo, hi) position ranges to score, persisting before each which one
        is tried; `done` scores restored from earlier attempts are in `self.done`, killers in `self.killers`."""
        state = self.state
        done = state.get("done", {})
        suspects = [tuple(r) for r in state.get("suspects", [])]
        killers = list(state.get("killers", []))
        self.alone = {int(k): v for k, v in state.get("alone", {}).items()}  # position -> deaths alone
        self.done = {int(k): v for k, v in done.items()}
        # The attempt that left this marker died: counted unless its node was lost with it.
        self.deaths = int(state.get("deaths", 0)) + (0 if self.node_lost else 1)
        self._record_fault()
        if self.budget >= 0 and self.deaths > self.budget:
            self._save(suspects, killers, state.get("trying"))  # the death counted, for `describe_stuck`
            raise BlockKeepsKilling(
                f"block of {self.n} pairs starting {', '.join(self.ids[:5])} killed its scoring actor "
                f"{self.deaths} times (budget {self.budget})"
            )
        if state.get("trying") is not None:
            lo, hi = state["trying"]
            if self.node_lost:  # the cluster's failure, not the part's: the same part again
                suspects = [(lo, hi), *suspects]
            elif hi - lo == 1:
                self.alone[lo] = self.alone.get(lo, 0) + 1
                if self.alone[lo] >= CONVICT_AFTER:
                    killers.append(lo)
                else:  # one death is no evidence: the node, not the pair, may have died
                    suspects = [(lo, hi), *suspects]
            else:
                mid = (lo + hi) // 2
                suspects = [(lo, mid), (mid, hi), *suspects]
        self.killers = killers
        while suspects:
            lo, hi = suspects.pop(0)
            self._save(suspects, killers, [lo, hi])
            yield lo, hi
        self._save([], killers, None)

    def record(self, positions: np.ndarray, scores: np.ndarray, errors: list) -> None:
        """Keep the results of a finished part (written with the next marker)."""
        for p, s, e in zip(positions, scores, errors, strict=True):
            self.done[int(p)] = [None if not np.isfinite(s) else float(s), e]

    def finish(self) -> None:
        if self.path:
            fs, path = _fs(self.path)
            fs.rm(path)

    def _save(self, suspects, killers, trying) -> None:
        _write(
            self.path,
            {
                "first_ids": self.ids[:5],
                "pairs": self.n,
                "trying": trying,
                "suspects": [list(r) for r in suspects],
                "killers": killers,
                "done": self.done,
                "alone": self.alone,
                "deaths": self.deaths,
                "node": self.node,
            },
        )

    def _record_fault(self) -> None:
        """One record per arrival after a death: what the manifest counts (`count_faults`)."""
        if self.path:
            name = f"{posixpath.basename(self.path)[:-5]}-{uuid.uuid4().hex[:8]}.json"
            _write(f"{self.directory.rstrip('/')}/{FAULTS}/{name}", {"node_lost": self.node_lost})


FAULTS = ".faults"


def count_faults(directory: str | None) -> dict[str, int]:
    """What faults cost this attempt of a run: `actor_restarts` (blocks retried after their scoring actor
    died mid-block), of which `actor_restarts_node_lost` died with their node (not counted against any
    block's budget or pair)."""
    counts = {"actor_restarts": 0, "actor_restarts_node_lost": 0}
    if directory is None:
        return counts
    fs, path = _fs(f"{directory.rstrip('/')}/{FAULTS}")
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return counts
    for name in fs.ls(path, detail=False):
        if name.endswith(".json"):
            with fs.open(name, "r") as f:
                lost = json.load(f).get("node_lost", False)
            counts["actor_restarts"] += 1
            counts["actor_restarts_node_lost"] += int(bool(lost))
    return counts


def describe_stuck(directory: str) -> str | None:
    """One line naming the blocks left in quarantine (their first pair ids), or None when there are none."""
    fs, path = _fs(directory)
    if not fs.exists(path):
        return None
    fs.invalidate_cache(path)
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".json"))
    markers = []
    for name in names:
        with fs.open(name, "r") as f:
            marker = json.load(f)
        if marker.get("deaths", 0) > 0:  # blocks merely in flight when the job stopped are not named
            markers.append(marker)
    if not markers:
        return None
    first = markers[0]
    return (
        f"{len(markers)} block(s) kept killing their scoring actor and the retries ran out before the pairs "
        f"that kill it were isolated; first block: {first['pairs']} pairs starting "
        f"{', '.join(first['first_ids'])}; raise --max-task-retries and --max-restarts (about log2(block "
        "rows) + 2) to isolate them, or remove those pairs"
    )


def clear(directory: str | None) -> None:
    """Remove every marker: what a resumed run does first, so blocks in flight when an earlier driver died
    start afresh instead of being taken for blocks that kill their actor."""
    if directory is None:
        return
    fs, path = _fs(directory)
    if fs.exists(path):
        fs.rm(path, recursive=True)
