"""Connect to the cluster a job runs on: `--ray-address`, else RAY_ADDRESS (set by `ray job submit`),
else a local instance started here (its workers inherit this process's environment)."""

from __future__ import annotations


def connect(address: str | None = None) -> None:
    import logging

    import ray

    # Ray Data logs every execution plan at INFO; a job's own summary is what a user reads.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
