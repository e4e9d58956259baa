"""Connect to the cluster a job runs on: `--ray-address`, else RAY_ADDRESS (set by `ray job submit`),
else a local instance started here. A local instance is kept on loopback (`jobs.loopback`): its processes
talk over 127.0.0.1, not the machine's outward address, listen on nothing wider, and Ray's own processes
send no request beyond loopback; joining a cluster is unchanged. Progress goes to stdout: the job's own stage and rate lines, and Ray Data's progress lines (logged, not drawn, when stdout is
not a terminal, as under `ray job submit`)."""

from __future__ import annotations

import logging
import os
import sys

from jobs.loopback import NO_OUTBOUND_HTTP_ENV, keep_local_ray_on_loopback
from pipelines.runs import progress


def connect(address: str | None = None, progress_interval: float = 30.0) -> None:
    import ray

    # Ray Data logs every execution plan at INFO; its progress lines (a child logger) stay on.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO)
    _log_to_stdout(progress.logger)
    progress.configure(progress_interval)
    if not ray.is_initialized():
        if address is None and not os.environ.get("RAY_ADDRESS"):  # an instance of its own: on loopback
            _start_local(ray)
        else:
            ray.init(address=address, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress_interval > 0
    ctx.enable_operator_progress_bars = progress_interval > 0
    if progress_interval > 0:
        # Ray Data reads its non-terminal log interval from the environment once, at import; the class
        # attribute is where that value lives (ray 2.60, ray/data/_internal/progress/logging_progress.py).
        from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

        LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC = max(1, int(progress_interval))


def _start_local(ray) -> None:
    """Start an instance of this job's own that stays local: its processes talk and listen on loopback
    (Ray's local-only switch), and Ray's own processes (GCS, raylet, dashboard and its agents) start with
    HTTP(S) sent to a closed loopback port, so the dashboard's cloud-metadata probes at start-up reach no
    other machine. The job's workers get this process's own proxy settings back (a runtime env), so model
    downloads and object-storage reads work as they would without the job."""
    keep_local_ray_on_loopback(block_outbound_http=False)
    own = {name: os.environ.get(name) for name in NO_OUTBOUND_HTTP_ENV}
    os.environ.update(NO_OUTBOUND_HTTP_ENV)  # inherited by the processes ray.init starts
    try:
        ray.init(log_to_driver=True, runtime_env={"env_vars": {k: v or "" for k, v in own.items()}})
    finally:
        for name, value in own.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Stdout(logging.StreamHandler):
    """A handler on whatever `sys.stdout` is when a line is written (it may be replaced after set-up)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stdout(logger: logging.Logger) -> None:
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
