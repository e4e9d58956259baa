"""The DDP check the training manifest reports (`replicas_in_sync`): every worker's parameter digest,
gathered over the process group, is equal when the workers hold the same weights and differs when one has
drifted by a single float32 step. Two processes in a gloo group on loopback, no Ray; marked long with the
training tests whose assertion it backs (each spawned worker imports transformers: ~20 s)."""

from __future__ import annotations

import os

import pytest


def _worker(rank: int, init: str, drift: bool, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    import torch
    import torch.distributed as dist

    from pipelines.train.loop import gather_digests

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    if drift and rank == 1:
        with torch.no_grad():
            weight = model[1].weight
            weight[0, 3] = torch.nextafter(weight[0, 3], torch.tensor(1.0))
    digests = gather_digests(model, 2)
    if rank == 0:
        with open(out, "w") as f:
            f.write(str(all(d == digests[0] for d in digests)))
    dist.destroy_process_group()


@pytest.mark.long
@pytest.mark.parametrize(("drift", "in_sync"), [(False, "True"), (True, "False")])
def test_digests_tell_identical_replicas_from_drifted_ones(tmp_path, drift, in_sync):
    import torch.multiprocessing as mp

    out = tmp_path / "in_sync.txt"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_worker, args=(init, drift, str(out)), nprocs=2, start_method="spawn")
    assert out.read_text() == in_sync
