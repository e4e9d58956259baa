"""A long job shows that it is alive: each stage's start and end, and every `interval` seconds the pairs
done out of the total, the rate and an ETA. Lines go to the `ray_rerank` logger, which the jobs send to
stdout (and so to `ray job logs`); Ray Data's own progress lines are turned on at the same interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("ray_rerank")
_interval = 30.0


def configure(interval: float) -> None:
    """Log progress every `interval` seconds (0 turns the periodic lines off; stage lines stay)."""
    global _interval
    _interval = interval


def interval() -> float:
    return _interval


@contextmanager
def stage(name: str, detail: str = "") -> Iterator[None]:
    """Log `name` starting and finishing (with its duration), or failing."""
    started = time.perf_counter()
    logger.info("stage %s: started%s", name, f" ({detail})" if detail else "")
    try:
        yield
    except BaseException:
        logger.info("stage %s: failed after %.1f s", name, time.perf_counter() - started)
        raise
    logger.info("stage %s: finished in %.1f s", name, time.perf_counter() - started)


class Counter:
    """A count the driver's loop adds to and a `Ticker` reads from its thread (`value` is its `done`)."""

    def __init__(self, start: int = 0):
        self._value = start
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._value += n

    def value(self) -> int:
        with self._lock:
            return self._value


class Ticker:
    """While open, every `interval()` seconds log `done()` of `total` with the rate since opening and an
    ETA. `done` is polled from a background thread: it should be cheap and local (a `Counter` of what the
    workers reported), never a listing of remote storage."""

    def __init__(self, what: str, total: int, done: Callable[[], int]):
        self.what, self.total, self.done = what, total, done
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._base = 0

    def __enter__(self) -> Ticker:
        if _interval > 0:
            self._started = time.perf_counter()
            self._base = self._poll() or 0
            self._thread = threading.Thread(target=self._run, name=f"progress-{self.what}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def line(self, done: int, elapsed: float) -> str:
        rate = (done - self._base) / elapsed if elapsed > 0 else 0.0
        left = self.total - done
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"{self.what}: {done}/{self.total} ({pct:.1f}%), {rate:.1f}/s, ETA {eta}"

    def _poll(self) -> int | None:
        try:
            return int(self.done())
        except Exception as exc:  # progress must never fail the job it reports on
            logger.debug("progress poll failed: %s", exc)
            return None

    def _run(self) -> None:
        while not self._stop.wait(_interval):
            done = self._poll()
            if done is not None:
                logger.info(self.line(done, time.perf_counter() - self._started))
