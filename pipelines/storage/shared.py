"""A local output on a cluster of several nodes must be storage every node sees: checked, not assumed.

Scoring actors commit checkpoint pieces where they run, and the driver ranks what it can list; a local path
that is each node's own disk scatters the pieces over the nodes, and the run either fails at the end or
ranks a part of the pairs. So before anything is written, a task pinned to each other node (up to
`MAX_PROBED_NODES`) writes a probe file under the output, and the driver must see every one of them;
otherwise the run is refused in one line. Object storage (`s3://`, any fsspec URI with a remote scheme) and
a cluster of one node skip the check.

`SIMULATE_NODE_DISKS_ENV` is a test setting: on one machine every node shares the disk, so with it set (to
`1`) each probe task writes under a directory of its own node instead (`<output>/_storage_probe/node-<id>/`),
as if each node had a disk of its own, and a test can see the refusal.

The driver removes the probe directory it sees; on a node that does not share the output, the probe file
it wrote stays on that node's disk (under `<output>/_storage_probe/`).
"""

from __future__ import annotations

import os
import uuid

import fsspec

from pipelines.storage import uris
from schemas.tables import InputError

SIMULATE_NODE_DISKS_ENV = "RERANK_TEST_NODE_DISKS"
PROBE_DIR = "_storage_probe"
MAX_PROBED_NODES = 16
PROBE_TIMEOUT_S = 120.0


def is_local_output(output: str) -> bool:
    """A path on the node's own filesystem (no scheme, or `file://`), not object storage."""
    protocol, _ = fsspec.core.split_protocol(output)
    return protocol in (None, *uris.LOCAL_PROTOCOLS)


def nodes_to_probe(output: str, nodes: list[dict], driver_node: str) -> list[str]:
    """The node ids whose view of `output` must be checked: every alive node but the driver's (at most
    `MAX_PROBED_NODES`), none for object storage or a cluster of one node. `nodes`: as `ray.nodes()`."""
    if not is_local_output(output):
        return []
    alive = sorted(n["NodeID"] for n in nodes if n.get("Alive"))
    if len(alive) < 2:
        return []
    return [n for n in alive if n != driver_node][:MAX_PROBED_NODES]


def probe_path(output: str, token: str, node_id: str, own_disk: bool) -> str:
    """Where the probe task of `node_id` writes; under its own directory when nodes simulate own disks."""
    directory = uris.join(output, PROBE_DIR)
    if own_disk:
        directory = uris.join(directory, f"node-{node_id}")
    return uris.join(directory, f"{token}-{node_id}")


def refusal(output: str, blind: list[str]) -> str:
    """The one line a run is refused with: the output, the nodes that do not see it, the fix."""
    named = ", ".join(n[:12] for n in blind[:3]) + (f" and {len(blind) - 3} more" if len(blind) > 3 else "")
    return (
        f"--output {output} is a local path that other nodes of this cluster do not share (a file written "
        f"there on node {named} is not visible to the driver); on a cluster of several nodes use shared "
        "storage such as s3:// or a mount every node sees"
    )


def _write_probe(path: str) -> str:
    """On the probed node: write the probe file; returns the node id it ran on."""
    import ray

    fs, local = uris.filesystem(path)
    fs.makedirs(os.path.dirname(local), exist_ok=True)
    with fs.open(local, "wb") as f:
        f.write(b"probe")
    return ray.get_runtime_context().get_node_id()


def require_shared(output: str) -> None:
    """Refuse (InputError: exit 2) a local `output` that some other node of the connected cluster does not
    share. Assumes `ray.init` was called."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = ray.get_runtime_context().get_node_id()
    targets = nodes_to_probe(output, ray.nodes(), driver_node)
    if not targets:
        return
    token = uuid.uuid4().hex[:12]
    own_disk = os.environ.get(SIMULATE_NODE_DISKS_ENV) == "1"
    paths = {n: probe_path(output, token, n, own_disk) for n in targets}
    write = ray.remote(_write_probe)
    refs = {
        n: write.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n, soft=False),
            max_retries=0,
        ).remote(paths[n])
        for n in targets
    }
    GONE = (
        ray.exceptions.NodeDiedError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.TaskUnschedulableError,
        ray.exceptions.GetTimeoutError,
    )
    probe_dir = uris.join(output, PROBE_DIR)
    try:
        blind = []
        for node, ref in refs.items():
            try:
                ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except GONE:  # the node left the cluster meanwhile: it runs nothing of this job
                continue
            except ray.exceptions.RayTaskError:  # the node cannot even write there
                blind.append(node)
                continue
            if not uris.exists(probe_path(output, token, node, own_disk=False)):
                blind.append(node)
    finally:
        uris.remove(probe_dir)
    if blind:
        raise InputError(refusal(output, blind))
