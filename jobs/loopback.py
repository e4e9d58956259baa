"""The environment that keeps a local Ray instance's traffic on loopback, for tests and benchmarks.

Two things in Ray 2.60 send traffic beyond loopback from a local instance on Linux:
- its processes talk to each other at the machine's outward address (the interface of its default route),
  unless Ray's local-only switch is set: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when Ray is imported;
  every process then uses 127.0.0.1;
- its dashboard process (started even without the dashboard, for usage stats) probes cloud metadata
  endpoints through `requests` at start-up (169.254.169.254 and a DNS lookup of metadata.google.internal),
  whether or not usage stats are enabled. The proxy variables send every HTTP(S) request for a host that is
  not loopback to a closed loopback port, where it fails at once; loopback hosts bypass it. The job's own
  media fetcher ignores proxy variables and vets addresses itself (`actors.media.http_client`).

Set it before Ray starts, and only for a local instance: a driver that joins a cluster on another machine
must advertise its own outward address. Ray reads the switch into `ray._private.ray_constants` when it is
imported; where that has happened already, the constant is set too (the processes `ray.init` starts read the
environment). A job that starts its own instance (`jobs.ray_session`) sets the switch only: its driver and
workers fetch models and data (the Hub, S3) through the user's own proxy settings, so the proxy variables,
there to keep the tests' Ray dashboard from probing cloud metadata endpoints, are left alone.

A local instance is also sized for one machine (`ONE_MACHINE_ENV`, defaults the user's environment
overrides). Ray Data 2.60 lists every Parquet read through a pool of 32 footer-reader actors, each a new
worker process that needs a free CPU to be placed: built for listing object storage from a cluster, on one
machine it starts dozens of processes per read and stalls a read while the model actors hold the CPUs; one
actor reads a local folder's footers as fast. And Ray keeps at most as many idle workers as the machine has
CPUs, counting the actors Ray Data itself keeps alive, so on a small machine every task worker is killed a
second after its task and the next task starts a process that imports torch and loads the tokenizer again
(a 2-CPU test run started 114 processes in 5 minutes); at least 8 are kept warm.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

CLOSED_LOOPBACK_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens on it here
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"

RAY_LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
NO_OUTBOUND_HTTP_ENV = {
    **{name: CLOSED_LOOPBACK_PORT for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{name: LOOPBACK_HOSTS for name in ("no_proxy", "NO_PROXY")},
}
LOOPBACK_ONLY_ENV = {**RAY_LOCAL_ONLY_ENV, **NO_OUTBOUND_HTTP_ENV}
ONE_MACHINE_ENV = {
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    "RAY_num_workers_soft_limit": str(max(8, os.cpu_count() or 1)),  # Ray's default: the CPU count
}


def keep_local_ray_on_loopback(
    environ: MutableMapping[str, str] = os.environ, *, block_outbound_http: bool = True
) -> None:
    """Set `LOOPBACK_ONLY_ENV` in `environ` (this process and what it starts afterwards); with
    `block_outbound_http=False`, only Ray's local-only switch (`RAY_LOCAL_ONLY_ENV`). `ONE_MACHINE_ENV` where
    `environ` does not set it already."""
    environ.update(LOOPBACK_ONLY_ENV if block_outbound_http else RAY_LOCAL_ONLY_ENV)
    for name, value in ONE_MACHINE_ENV.items():
        environ.setdefault(name, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and environ is os.environ:  # Ray imported already: what it read at import
        constants.ENABLE_RAY_CLUSTER = False


def cluster_head(**head_node_args):
    """A `ray.cluster_utils.Cluster` with its head started (a benchmark's or a test's several-node cluster on
    this machine). The head writes its address for `ray.init(address="auto")`; the file another instance
    wrote before (a test session's) is put back, so nothing else on the machine joins this cluster by
    accident. Call `keep_local_ray_on_loopback` first so every node listens on 127.0.0.1."""
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    address_file = get_ray_address_file(None)
    saved = None
    if os.path.exists(address_file):
        with open(address_file) as f:
            saved = f.read()
    cluster = Cluster(initialize_head=True, head_node_args=head_node_args)
    if saved is None:
        os.remove(address_file)
    else:
        with open(address_file, "w") as f:
            f.write(saved)
    return cluster
