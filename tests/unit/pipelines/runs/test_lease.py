"""The fenced lease under the races a cluster produces, on a local disk and on object storage (moto's S3
server on loopback): one holder at a time, a driver that lost its lease stops and its pieces are fenced off,
age judged on the store's clock, a reused pid recognised."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import pytest

from pipelines.runs import lease as lease_module
from pipelines.runs.lease import Lease, LeaseLost, check_fence, process_start
from schemas.tables import InputError
from tests import media_files

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def s3_root():
    """One S3-compatible server on 127.0.0.1 for the module, and a bucket on it."""
    with media_files.s3_bucket("lease-bucket") as root:
        yield root


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    root = request.getfixturevalue("s3_root")
    return f"{root}/{request.node.name.replace('[', '-').replace(']', '')}-{time.monotonic_ns()}"


def test_a_taken_over_driver_stops_within_one_heartbeat_and_is_fenced_off(output):
    first = Lease(output, heartbeat_s=0.3, ttl_s=30, interrupt=False).acquire()
    with pytest.raises(InputError, match=r"being written by another driver \(.*:\d+, heartbeat \d+ s ago\)"):
        Lease(output, holder=f"{HOST}:{os.getpid()}").acquire()  # alive and renewed: refused
    second = Lease(output, holder=f"other-host:{os.getpid()}", ttl_s=0, heartbeat_s=30, interrupt=False)
    second.acquire()  # a driver that judges the first one's lease expired (a TTL of 0) takes it over
    taken = time.monotonic()
    while first.lost_to is None and time.monotonic() - taken < 30:
        time.sleep(0.02)
    assert first.lost_to == second.holder
    # its next heartbeat found the lease gone (not a timing claim: the slack is for a loaded machine)
    assert time.monotonic() - taken < 0.3 + 10
    assert second.generation == first.generation + 1
    with pytest.raises(LeaseLost, match="other-host"):
        check_fence(output, first.token)  # a piece made under the first lease is not committed
    check_fence(output, second.token)
    with pytest.raises(LeaseLost, match=r"taken over by other-host:\d+; it stopped"):
        first.__exit__(None, None, None)
    second.release()
    with pytest.raises(LeaseLost, match="nobody"):
        check_fence(output, second.token)


def test_the_lost_lease_interrupts_the_driver_and_exits_as_a_user_error(tmp_path):
    """The driver's main thread is interrupted (whatever it waits on) and the run ends with LeaseLost,
    an InputError: exit 2 naming the new holder."""
    output = str(tmp_path)
    rival = Lease(output, holder="rival-host:7", ttl_s=0, interrupt=False)
    started = time.monotonic()
    with pytest.raises(LeaseLost, match="taken over by rival-host:7"), Lease(output, heartbeat_s=0.2):
        threading.Timer(0.3, rival.acquire).start()
        time.sleep(30)  # the scoring loop: interrupted
    assert time.monotonic() - started < 0.3 + 0.2 + 10  # far from the 30 s it would otherwise sleep
    rival.release()


def test_a_live_holder_with_a_skewed_clock_is_not_taken_over(output, monkeypatch):
    """Age is the store's clock against the store's clock: a holder whose own clock runs 90 s behind is
    alive while it renews."""
    real = time.time
    monkeypatch.setattr(lease_module.time, "time", lambda: real() - 90)
    holder = Lease(output, holder="far-host:11", ttl_s=60, interrupt=False).acquire()
    monkeypatch.setattr(lease_module.time, "time", real)
    with pytest.raises(InputError, match=r"far-host:11, heartbeat (\d+) s ago") as refused:
        Lease(output, ttl_s=60).acquire()
    assert (
        int(re.search(r"heartbeat (\d+) s", str(refused.value)).group(1)) < 30
    )  # not 90: the writer's clock is not read
    holder.release()


def test_a_restarted_holder_with_a_reused_pid_is_taken_over_at_once(tmp_path):
    """The pid is alive (it is this very process) but started at another time: the holder is gone."""
    record = {"holder": f"{HOST}:{os.getpid()}", "host": HOST, "pid": os.getpid(), "start": "1", "token": "t"}
    (tmp_path / "_lease.json").write_text(json.dumps({**record, "generation": 4}))
    assert process_start(os.getpid()) != "1"
    with Lease(str(tmp_path), ttl_s=600) as mine:
        assert mine.generation == 5
    (tmp_path / "_lease.json").write_text(json.dumps({**record, "start": process_start(os.getpid())}))
    with pytest.raises(InputError, match="being written by another driver"):
        Lease(str(tmp_path), ttl_s=600).acquire()  # same pid, same start: alive


def test_drivers_starting_together_get_one_lease(output):
    won, refused = [], []

    def start(k: int) -> None:
        try:
            won.append(Lease(output, holder=f"host-{k}:1", interrupt=False, heartbeat_s=30).acquire())
        except InputError:
            refused.append(k)

    threads = [threading.Thread(target=start, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3
    won[0].release()
