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
