"""The scoring checkpoint's pieces, the one-driver lease and the run identity, on local files (the same
fsspec calls serve s3://)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.runs import lease
from pipelines.runs.checkpoint import Checkpoint, commit_piece, drop_committed, row_keys
from pipelines.runs.lease import Lease, check_identity
from schemas import columns as c
from schemas.tables import InputError


def block(keys) -> pa.Table:
    return pa.table(
        {c.ROW_KEY: pa.array(keys, pa.int64()), "score": pa.array([0.5] * len(keys), pa.float32())}
    )


def test_pieces_commit_whole_and_resume_skips_exactly_their_rows(tmp_path):
    ckpt = Checkpoint(str(tmp_path))
    assert ckpt.pieces() == [] and len(ckpt.committed_keys()) == 0
    keys = row_keys(file_index=1, first_row=0, rows=6).to_numpy()
    assert keys[0] == 1 << 40 and list(np.diff(keys)) == [1] * 5
    assert commit_piece(block(keys[:2]), ckpt.directory).column("committed").to_pylist() == [2]
    commit_piece(block(keys[4:5]), ckpt.directory)
    commit_piece(block(keys[:2]), ckpt.directory)  # a retried block replaces its own piece
    commit_piece(block([]), ckpt.directory)  # an empty block commits nothing
    (tmp_path / "_scored" / ".tmp-deadbeef.parquet").write_bytes(b"PAR1 half written")  # a killed writer
    assert len(ckpt.pieces()) == 2
    assert list(ckpt.committed_keys()) == [keys[0], keys[1], keys[4]]
    left = drop_committed(block(keys), ckpt.committed_keys())
    assert left.column(c.ROW_KEY).to_pylist() == [keys[2], keys[3], keys[5]]
    ckpt.remove()
    assert ckpt.pieces() == []


def test_piece_stats_sum_and_keep_the_window(tmp_path):
    ckpt = Checkpoint(str(tmp_path))
    for keys, start, end in (([1, 2], 10.0, 12.0), ([3], 9.0, 11.0)):
        commit_piece(
            block(keys),
            ckpt.directory,
            lambda t, s=start, e=end: {"rows": t.num_rows, "min_forward_start": s, "max_forward_end": e},
        )
    assert ckpt.stats() == {"rows": 3, "min_forward_start": 9.0, "max_forward_end": 12.0}


def test_a_second_driver_is_refused_and_a_dead_ones_lease_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    with Lease(str(tmp_path)):
        other = Lease(str(tmp_path), holder=f"{socket.gethostname()}:{1}")  # pid 1 is alive
        with pytest.raises(
            InputError, match=r"being written by another driver \(.*:\d+, heartbeat \d+ s ago\)"
        ):
            other.acquire()
    assert not (tmp_path / "_lease.json").exists()  # released

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Lease(str(tmp_path), holder=f"{socket.gethostname()}:{dead.pid}").acquire()
    stale._stop.set()  # a killed driver's lease: written, never renewed or released
    with Lease(str(tmp_path)) as mine:  # taken over at once: its holder's pid is gone
        time.sleep(0.2)
        assert lease.uris.read_json(mine.path)["holder"] == mine.holder


def test_run_identity_names_what_changed(tmp_path):
    out = str(tmp_path)
    fields = {"model": "sha256:aa", "prompt": None, "top_k": 5, "inputs": [["p.parquet", 10, "1"]]}
    assert check_identity(out, "night1", fields) is False
    assert check_identity(out, "night1", dict(fields)) is True
    with pytest.raises(InputError, match="different model, prompt; resume it with the same"):
        check_identity(out, "night1", {**fields, "prompt": "judge:", "model": "sha256:bb"})
    with pytest.raises(InputError, match="holds the unfinished run 'night1'; pass --run-id night1"):
        check_identity(out, "night2", fields)


def test_complete_means_every_row_covered_and_overlaps_keep_one_copy(tmp_path):
    """Pieces holding rows {0,1} and {1,2} of a 4-row input hold 4 rows but miss row 3 (a count would call
    it complete); once row 3 is committed the run is complete and row 1's second copy is dropped."""
    ckpt = Checkpoint(str(tmp_path))
    keys = row_keys(file_index=0, first_row=0, rows=4).to_numpy()
    commit_piece(block(keys[[0, 1]]), ckpt.directory)
    commit_piece(block(keys[[1, 2]]), ckpt.directory)
    assert ckpt.committed_rows() == 4
    assert ckpt.coverage(ckpt.pieces(), [4]) == (1, 1)
    commit_piece(block(keys[[3]]), ckpt.directory)
    assert ckpt.coverage(ckpt.pieces(), [4]) == (0, 0)  # the copy was dropped from the later piece above
    held = sorted(k for p in ckpt.pieces() for k in pq.read_table(p).column(c.ROW_KEY).to_pylist())
    assert held == list(keys)


def test_a_piece_is_committed_only_under_the_lease_it_was_made_for(tmp_path):
    ckpt = Checkpoint(str(tmp_path))
    with Lease(str(tmp_path), interrupt=False) as mine:
        commit_piece(block([1, 2]), ckpt.directory, fence=(str(tmp_path), mine.token, mine.generation))
        with pytest.raises(lease.LeaseLost, match="this piece was not committed"):
            commit_piece(block([3]), ckpt.directory, fence=(str(tmp_path), "another-drivers-token", 9))
    assert list(ckpt.committed_keys()) == [1, 2]
    generation = pq.ParquetFile(ckpt.pieces()[0]).schema_arrow.metadata[b"ray_rerank.lease_generation"]
    assert int(generation) == mine.generation
