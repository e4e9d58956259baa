"""Connect to the cluster a job runs on: `--ray-address`, else RAY_ADDRESS (set by `ray job submit`),
else a local instance started here (its workers inherit this process's environment)."""

from __future__ import annotations


def connect(address: str | None = None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
