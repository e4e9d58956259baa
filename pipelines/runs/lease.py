"""One driver per run: a fenced lease with a heartbeat, and the record of what a run is (its identity).

`<output>/_lease.json` names the driver that holds the run (host, pid, the process's start time), a random
token and a generation that grows with every acquisition. It is created only if absent (`O_EXCL`-style on a
local disk, `If-None-Match: *` on object storage) and renewed only while it is still the one this driver
wrote (a lock around read-compare-write on a local disk, `If-Match: <ETag>` on object storage), so two
drivers can never both hold it. A driver whose renewal finds another holder has lost the run: it stops
before committing anything more (its main thread is interrupted within one heartbeat) and exits 2 naming
the new holder; the scoring actors check the fence (`check_fence`) before they commit a piece.

A lease is taken over when its holder is gone: on the same host at once when its process is gone or the
pid now belongs to another process (compared by start time, so a restarted pod with a reused pid is not
refused); anywhere when its last renewal is older than the TTL. That age is measured on the store's own
clock (the lease object's modification time against a probe object written now), never the holder's.

`<output>/_run.json` records the run id and every field that decides the output (model fingerprint,
settings that change a score, top-k, the input files with sizes and modification times or ETags). A rerun
whose fields differ fails naming what changed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from pipelines.storage import uris
from pipelines.storage.versioned import VersionedObject
from schemas.tables import InputError

LEASE_TTL_S = 60.0
HEARTBEAT_S = 10.0
LEASE_FILE = "_lease.json"


class LeaseLost(InputError):
    """This driver's lease was taken over: another driver now holds the run."""


def process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, from /proc), which tells a reused pid apart; None
    where it cannot be read (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class Lease:
    """`with Lease(output):` holds the run for this driver; raises InputError when a live driver holds it,
    and LeaseLost (from the `with` body) when another driver takes it over meanwhile."""

    output: str
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    file: str = LEASE_FILE  # a job that runs another inside its output (the refresh) names its own
    ttl_s: float | None = None  # default LEASE_TTL_S
    heartbeat_s: float | None = None  # default HEARTBEAT_S
    interrupt: bool = True  # interrupt the main thread when the lease is lost (off in tests of the thread)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    generation: int = 0
    lost_to: str | None = None
    _version: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return uris.join(self.output, self.file)

    def acquire(self) -> Lease:
        self.ttl_s = LEASE_TTL_S if self.ttl_s is None else self.ttl_s
        self.heartbeat_s = HEARTBEAT_S if self.heartbeat_s is None else self.heartbeat_s
        store = VersionedObject(self.path)
        for _ in range(5):  # a lost race to a takeover or a renewal only repeats the decision
            current = store.read_json()
            if current is not None:
                held, version = current
                age = store.age()
                if held.get("token") != self.token and self._alive(held, age):
                    raise InputError(
                        f"{self.output} is being written by another driver ({held.get('holder')}, heartbeat "
                        f"{age:.0f} s ago); wait for it, stop it, or choose another --output"
                    )
            else:
                held, version = {}, None
            self.generation = int(held.get("generation", 0)) + 1
            if store.write(self._record(), version):
                self._version = store.read()[1]
                break
        else:
            raise InputError(f"{self.output}: could not take the run's lease; another driver keeps taking it")
        self._thread = threading.Thread(target=self._run, args=(store,), name="run-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost_to is None and self._version is not None:
            VersionedObject(self.path).remove(self._version)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, kind, exc, tb) -> None:
        self.release()
        if self.lost_to is not None and (kind is None or issubclass(kind, KeyboardInterrupt)):
            raise self.lost_error() from exc

    def lost_error(self) -> LeaseLost:
        return LeaseLost(
            f"{self.output}: this driver's lease (generation {self.generation}) was taken over by "
            f"{self.lost_to}; it stopped and committed nothing more"
        )

    def _record(self) -> dict:
        host, _, pid = self.holder.rpartition(":")
        return {
            "holder": self.holder,
            "host": host,
            "pid": int(pid),
            "start": process_start(int(pid)),
            "token": self.token,
            "generation": self.generation,
            "heartbeat": time.time(),  # the writer's clock: for people reading the file, never for age
        }

    def _alive(self, held: dict, age: float | None) -> bool:
        """A holder is alive while its last renewal is younger than the TTL (on the store's clock) and, on
        this host, while its process runs: the same pid with the same start time."""
        if held.get("host") == socket.gethostname():
            start = process_start(int(held.get("pid", -1)))
            if start is None or (held.get("start") is not None and start != held["start"]):
                return False  # the process is gone, or its pid now belongs to another process
        return age is not None and age < self.ttl_s

    def _run(self, store: VersionedObject) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if store.write(self._record(), self._version):
                    self._version = store.read()[1]
                    continue
            except OSError:  # a missed beat only shortens the lease; the next one retries
                continue
            current = store.read_json()
            self.lost_to = (current[0].get("holder") if current else None) or "nobody (the lease was removed)"
            if self.interrupt:  # a real signal: it wakes the main thread from whatever it waits on
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return


def check_fence(output: str, token: str) -> None:
    """Raise LeaseLost unless the lease at `output` still carries `token`: what a scoring actor checks
    before it commits a piece made under that lease."""
    current = VersionedObject(uris.join(output, LEASE_FILE)).read_json()
    if current is None or current[0].get("token") != token:
        holder = current[0].get("holder") if current else "nobody"
        raise LeaseLost(f"{output}: the run's lease is now held by {holder}; this piece was not committed")


def input_stats(files: list[str]) -> list[list]:
    """[file, size, modification time or ETag] for each input file: part of a run's identity."""
    out = []
    for uri in files:
        fs, path = uris.filesystem(uri)
        info = fs.info(path)
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
        out.append([uri, info.get("size"), str(stamp)])
    return out


def check_identity(output: str, run_id: str, fields: dict, record_file: str = "_run.json") -> bool:
    """Record `fields` for `run_id` under `output`, or check them against the record of an earlier attempt.
    Returns True when an earlier attempt of the same run exists (a resume). Raises InputError naming what
    changed, or when `output` holds another run."""
    path = uris.join(output, record_file)
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
