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

Set it before Ray is imported, and only for a local instance: a driver that joins a cluster on another
machine must advertise its own outward address.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CLOSED_LOOPBACK_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens on it here
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"

LOOPBACK_ONLY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    **{name: CLOSED_LOOPBACK_PORT for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{name: LOOPBACK_HOSTS for name in ("no_proxy", "NO_PROXY")},
}


def keep_local_ray_on_loopback(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set `LOOPBACK_ONLY_ENV` in `environ` (this process and what it starts afterwards)."""
    environ.update(LOOPBACK_ONLY_ENV)
