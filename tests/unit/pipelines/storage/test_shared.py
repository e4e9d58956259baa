"""Which outputs are checked for being shared by every node, where the probes go, and the refusal's line."""

from __future__ import annotations

from pipelines.storage.shared import MAX_PROBED_NODES, is_local_output, nodes_to_probe, probe_path, refusal


def nodes(*ids: str, dead: tuple[str, ...] = ()) -> list[dict]:
    return [{"NodeID": n, "Alive": True} for n in ids] + [{"NodeID": n, "Alive": False} for n in dead]


def test_local_paths_are_checked_and_object_storage_is_not():
    assert is_local_output("/data/out") and is_local_output("file:///data/out") and is_local_output("out/")
    assert not is_local_output("s3://bucket/out") and not is_local_output("gs://bucket/out")


def test_every_other_alive_node_is_probed_on_a_cluster_of_several():
    assert nodes_to_probe("/out", nodes("head", "a", "b", dead=("c",)), driver_node="head") == ["a", "b"]
    assert nodes_to_probe("file:///out", nodes("head", "a"), driver_node="head") == ["a"]
    many = nodes(*(f"n{i:03d}" for i in range(40)))
    assert len(nodes_to_probe("/out", many, driver_node="n000")) == MAX_PROBED_NODES


def test_one_node_and_object_storage_skip_the_check():
    assert nodes_to_probe("/out", nodes("head"), driver_node="head") == []
    assert nodes_to_probe("/out", nodes("head", dead=("a", "b")), driver_node="head") == []
    assert nodes_to_probe("s3://bucket/out", nodes("head", "a", "b"), driver_node="head") == []


def test_simulated_node_disks_put_each_probe_under_its_node():
    shared = probe_path("/out", "t1", "abc", own_disk=False)
    own = probe_path("/out", "t1", "abc", own_disk=True)
    assert shared == "/out/_storage_probe/t1-abc" and own == "/out/_storage_probe/node-abc/t1-abc"


def test_the_refusal_is_one_line_naming_the_output_nodes_and_fix():
    line = refusal("/data/out", ["a" * 56, "b" * 56, "c", "d", "e"])
    assert "\n" not in line and line.startswith("--output /data/out is a local path")
    assert "a" * 12 + ", " + "b" * 12 + ", c and 2 more" in line and "a" * 13 not in line
    assert "use shared storage such as s3://" in line
