"""One driver per run: a lease file with a heartbeat, and the record of what a run is (its identity).

`<output>/_lease.json` names the driver that holds the run (host, pid) and when it last beat. A second
driver with the same output fails at once naming the holder; a lease whose holder is gone is taken over:
on the same host at once (its pid is no longer alive), elsewhere when its heartbeat is older than
`LEASE_TTL_S`. Object stores have no atomic create-if-absent here, so two drivers starting within the same
second can both win; the lease guards the common case (a second submission, a retried job), not a race.

`<output>/_run.json` records the run id and every field that decides the output (model fingerprint,
settings that change a score, top-k, the input files with sizes and modification times or ETags). A rerun
whose fields differ fails naming what changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from pipelines.storage import uris
from schemas.tables import InputError

LEASE_TTL_S = 60.0
HEARTBEAT_S = 10.0


@dataclass
class Lease:
    output: str
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return uris.join(self.output, "_lease.json")

    def acquire(self) -> Lease:
        if uris.exists(self.path):
            held = uris.read_json(self.path)
            if held.get("holder") != self.holder and _alive(held):
                age = time.time() - float(held.get("heartbeat", 0))
                raise InputError(
                    f"{self.output} is being written by another driver ({held.get('holder')}, heartbeat "
                    f"{age:.0f} s ago); wait for it, stop it, or choose another --output"
                )
        self._beat()
        self._thread = threading.Thread(target=self._run, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if uris.exists(self.path) and uris.read_json(self.path).get("holder") == self.holder:
            uris.remove(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        host, _, pid = self.holder.rpartition(":")
        uris.write_json(
            self.path, {"holder": self.holder, "host": host, "pid": int(pid), "heartbeat": time.time()}
        )

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a missed beat only shortens the lease; the next retries
                self._beat()


def _alive(held: dict) -> bool:
    """Whether the lease in `held` still has a live holder."""
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True
    return time.time() - float(held.get("heartbeat", 0)) < LEASE_TTL_S


def input_stats(files: list[str]) -> list[list]:
    """[file, size, modification time or ETag] for each input file: part of a run's identity."""
    out = []
    for uri in files:
        fs, path = uris.filesystem(uri)
        info = fs.info(path)
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
        out.append([uri, info.get("size"), str(stamp)])
    return out


def check_identity(output: str, run_id: str, fields: dict) -> bool:
    """Record `fields` for `run_id` under `output`, or check them against the record of an earlier attempt.
    Returns True when an earlier attempt of the same run exists (a resume). Raises InputError naming what
    changed, or when `output` holds another run."""
    path = uris.join(output, "_run.json")
    if not uris.exists(path):
        uris.write_json(path, {"run_id": run_id, "fields": fields})
        return False
    record = uris.read_json(path)
    if record.get("run_id") != run_id:
        raise InputError(
            f"{output} holds the unfinished run {record.get('run_id')!r}; pass --run-id "
            f"{record.get('run_id')} to resume it, --mode overwrite to replace it, or another --output"
        )
    changed = changed_fields(record.get("fields", {}), fields)
    if changed:
        raise InputError(
            f"run {run_id!r} at {output} was started with a different {', '.join(changed)}; resume it with "
            "the same settings and inputs, or pass --mode overwrite, or choose another --run-id"
        )
    return True


def changed_fields(before: dict, now: dict) -> list[str]:
    """The names whose values differ (compared as JSON, so tuples equal the lists they were saved as)."""

    def norm(value):
        return json.loads(json.dumps(value, sort_keys=True, default=str))

    return sorted(k for k in set(before) | set(now) if norm(before.get(k)) != norm(now.get(k)))
