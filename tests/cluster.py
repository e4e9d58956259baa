"""A local multi-node Ray cluster for the tests that need the real topology: a head node without CPUs (the
driver's node, as on a KubeRay head) and worker nodes with one CPU each and a resource of their own
(`node:<name>`, here `worker_a`, `worker_b`, ...), all processes on 127.0.0.1.

Import the fixture into a test module (`from tests.cluster import ray_cluster  # noqa: F401`); it is
module-scoped: one cluster per module. Jobs run against it as subprocesses (`--ray-address`, `job_env`),
never through `ray.init` in the pytest process, which holds the session's own Ray instance
(`tests.conftest.ray_session`) and must keep it. The pytest process reads the cluster's state through
the head's GCS (`LocalCluster.actor_nodes`, `LocalCluster.alive_nodes`), which needs no connection.

The loopback switch (`jobs.loopback`, set at conftest import) reaches every process the cluster starts:
they inherit this process's environment, and `ray._private.ray_constants` was set when Ray was imported.
The fixture checks that each node reports 127.0.0.1 before a test uses it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from jobs.loopback import cluster_head
from tests.conftest import REPO

WORKER_CPUS = 1
OBJECT_STORE_BYTES = 128 * 1024 * 1024


@dataclass
class LocalCluster:
    """A running `ray.cluster_utils.Cluster` and the worker nodes it holds, by name."""

    cluster: object  # ray.cluster_utils.Cluster
    workers: dict = field(default_factory=dict)  # name -> ray._private.node.Node
    _added: int = 0

    @property
    def address(self) -> str:
        """The GCS address a job joins with `--ray-address`."""
        return self.cluster.address

    def add_worker(self, name: str | None = None):
        """Start one more worker node (1 CPU, resource `name`); returns its name once it is alive."""
        self._added += 1
        name = name or f"worker_{chr(ord('a') + self._added - 1)}"
        node = self.cluster.add_node(
            num_cpus=WORKER_CPUS,
            resources={name: 1},
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
        )
        if node.node_ip_address != "127.0.0.1":
            raise RuntimeError(f"worker node {name} started on {node.node_ip_address}, not loopback")
        self.workers[name] = node
        return name

    def remove_worker(self, name: str, graceful: bool = False) -> None:
        """Kill every process of a worker node (ungraceful: as a preempted or crashed machine)."""
        self.cluster.remove_node(self.workers.pop(name), allow_graceful=graceful)

    def node_name(self, node_id: str) -> str | None:
        return next((n for n, node in self.workers.items() if node.node_id == node_id), None)

    def alive_nodes(self) -> list[str]:
        """Node ids the GCS holds alive."""
        return [n["NodeID"] for n in self.cluster.global_state.node_table() if n["Alive"]]

    def actor_nodes(self, class_fragment: str) -> list[str]:
        """Names of the worker nodes running an alive actor whose class name holds `class_fragment`."""
        names = []
        for actor in self.cluster.global_state.actor_table(None).values():
            if actor["State"] == "ALIVE" and class_fragment in actor["ActorClassName"]:
                name = self.node_name(actor["Address"]["NodeID"])
                if name is not None:
                    names.append(name)
        return names

    def shutdown(self) -> None:
        """Stop every node. Not `Cluster.shutdown`: that also resets the internal KV client of this
        process's own Ray session (`ray_session`) and deletes the address file another instance wrote."""
        for name in list(self.workers):
            self.remove_worker(name, graceful=True)
        self.cluster.remove_node(self.cluster.head_node, allow_graceful=True)

    def job_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a job subprocess that joins this cluster."""
        env = {**os.environ, "RAY_ADDRESS": self.address, "PYTHONPATH": str(REPO)}
        env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
        return {**env, **(extra or {})}


def start_cluster(workers: int = 2) -> LocalCluster:
    cluster = cluster_head(
        num_cpus=0, resources={"head": 1}, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False
    )
    local = LocalCluster(cluster)
    if cluster.head_node.node_ip_address != "127.0.0.1":
        local.shutdown()
        raise RuntimeError(f"the head node started on {cluster.head_node.node_ip_address}, not loopback")
    for _ in range(workers):
        local.add_worker()
    deadline = time.monotonic() + 60
    while len(local.alive_nodes()) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    ips = {n["NodeManagerAddress"] for n in cluster.global_state.node_table() if n["Alive"]}
    if ips != {"127.0.0.1"}:
        local.shutdown()
        raise RuntimeError(f"cluster nodes report {sorted(ips)}, not only 127.0.0.1")
    return local


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    """A head without CPUs and two 1-CPU worker nodes (`worker_a`, `worker_b`) on loopback, for one module."""
    local = start_cluster()
    try:
        yield local
    finally:
        local.shutdown()
