"""The tests' Ray instance, and what it starts, stays on loopback (jobs.loopback). Checked on addresses
Ray reports and on proxy resolution of literal URLs: nothing here connects anywhere."""

from __future__ import annotations

import pytest

from jobs.loopback import CLOSED_LOOPBACK_PORT, LOOPBACK_ONLY_ENV


def test_the_session_instance_and_its_workers_use_loopback(ray_session):
    import ray

    assert ray_session.startswith("http://127.0.0.1:")  # the dashboard `ray job submit` talks to
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    worker_ip = ray.get(ray.remote(num_cpus=0)(ray.util.get_node_ip_address).remote())
    assert (ray.util.get_node_ip_address(), worker_ip) == ("127.0.0.1", "127.0.0.1")


@pytest.fixture
def loopback_env(monkeypatch):
    for name, value in LOOPBACK_ONLY_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata probes of Ray's dashboard
        "http://metadata.google.internal/computeMetadata/v1",
        "https://huggingface.co/api/models",
    ],
)
def test_requests_beyond_loopback_go_to_a_closed_loopback_port(loopback_env, url):
    from requests.utils import get_environ_proxies

    proxies = get_environ_proxies(url)
    assert proxies[url.split(":")[0]] == CLOSED_LOOPBACK_PORT


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8265/api/jobs/", "http://localhost:9000/bucket", "http://[::1]:80/"]
)
def test_loopback_requests_go_direct(loopback_env, url):
    from requests.utils import get_environ_proxies

    assert get_environ_proxies(url) == {}


LOCAL_JOB = """
import json, socket, psutil, ray
from jobs.ray_session import connect

connect(None, progress_interval=0)  # no --ray-address, no RAY_ADDRESS: a local instance of its own
import os
worker_env = ray.get(ray.remote(num_cpus=0)(lambda: dict(os.environ)).remote())  # a worker process too
ray_env = {}
bound = []
for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        sockets = process.net_connections(kind="inet")
    except psutil.Error:  # ended meanwhile
        continue
    for s in sockets:
        if s.status == psutil.CONN_LISTEN or s.type == socket.SOCK_DGRAM:
            bound.append([process.name(), s.laddr.ip, s.laddr.port])
    if any(part.endswith("dashboard/dashboard.py") for part in process.cmdline()):
        ray_env = process.environ()  # the dashboard's head process: it makes the cloud-metadata probes
print(json.dumps({
    "node_ip": ray.util.get_node_ip_address(),
    "bound": bound,
    "dashboard_proxy": ray_env.get("HTTPS_PROXY"),
    "worker_proxy": worker_env.get("HTTPS_PROXY"),
    "driver_proxy": os.environ.get("HTTPS_PROXY"),
}))
ray.shutdown()
"""
LOOPBACK_ADDRESSES = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_a_job_that_starts_its_own_instance_listens_on_loopback_only():
    """`jobs.ray_session.connect` without an address, in a fresh process whose environment lacks Ray's
    local-only switch: every socket its Ray processes (GCS, raylet, dashboard and its agents, workers)
    listen on is a loopback address; Ray's own processes (the dashboard among them, whose cloud-metadata
    probes run at start-up) have HTTP(S) sent to a closed loopback port, while the job's driver and workers
    keep the user's proxy."""
    import json
    import os
    import subprocess
    import sys

    from jobs.loopback import CLOSED_LOOPBACK_PORT, RAY_LOCAL_ONLY_ENV

    env = {k: v for k, v in os.environ.items() if k not in RAY_LOCAL_ONLY_ENV and k != "RAY_ADDRESS"}
    env["HTTPS_PROXY"] = "http://127.0.0.1:3128"  # the user's own proxy (on loopback: nothing is sent)
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_JOB], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    bound = report["bound"]
    print(f"\n{len(bound)} sockets bound by the job's Ray processes: {bound}")
    assert report["node_ip"] == "127.0.0.1"
    assert {name for name, _, _ in bound} >= {"gcs_server", "raylet"}
    assert [s for s in bound if s[1] not in LOOPBACK_ADDRESSES] == []
    # Ray's own processes send HTTP(S) to a closed loopback port (no metadata probe leaves the machine);
    # the job's workers and its driver keep the user's proxy.
    assert report["dashboard_proxy"] == CLOSED_LOOPBACK_PORT
    assert report["worker_proxy"] == report["driver_proxy"] == "http://127.0.0.1:3128"


@pytest.mark.parametrize(
    ("flag", "env_address", "local"),
    [(None, None, True), ("10.0.0.5:6379", None, False), (None, "http://10.0.0.5:8265", False)],
)
def test_only_an_instance_of_its_own_gets_the_switch(monkeypatch, flag, env_address, local):
    """`connect` sets Ray's local-only switch (in the environment and in the constant Ray read at import)
    when it starts an instance of its own; joining a cluster (`--ray-address`, or RAY_ADDRESS as `ray job
    submit` sets it) leaves both alone. A job's proxy settings are never touched. Ray is not started."""
    import os

    import ray
    from ray._private import ray_constants

    from jobs import ray_session

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    if env_address:
        monkeypatch.setenv("RAY_ADDRESS", env_address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)

    from jobs.loopback import NO_OUTBOUND_HTTP_ENV

    PROXIES_BACK = {name: os.environ.get(name) or "" for name in NO_OUTBOUND_HTTP_ENV}
    ray_session.connect(flag, progress_interval=0)

    if local:  # Ray's own processes start with outbound HTTP closed; the job's workers get the job's proxy
        assert calls == [{"log_to_driver": True, "runtime_env": {"env_vars": PROXIES_BACK}}]
    else:
        assert calls == [{"address": flag, "log_to_driver": True}]
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == ("0" if local else None)
    assert ray_constants.ENABLE_RAY_CLUSTER is (not local)
    assert os.environ["HTTPS_PROXY"] == "http://proxy.example:3128"


def test_a_local_instance_is_sized_for_one_machine_unless_the_user_says_otherwise(ray_session):
    """One footer-reader actor per Parquet read (Ray Data's default is 32, each a new process) and at least 8
    idle workers kept warm (Ray's default: the CPU count), as `jobs.loopback` sets them."""
    import os

    import ray

    from jobs.loopback import keep_local_ray_on_loopback

    def settings() -> tuple[str | None, str | None]:
        env = dict(os.environ)  # Ray's own spelling of its config variables is lower case
        return env.get("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"), env.get("RAY_num_workers_soft_limit")

    footer_readers, warm_workers = ray.get(ray.remote(num_cpus=0)(settings).remote())
    assert footer_readers == "1" and int(warm_workers) >= 8
    environ = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "8"}
    keep_local_ray_on_loopback(environ, block_outbound_http=False)
    assert environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "8"
    assert environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
