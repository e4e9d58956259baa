"""The scoring stage's Ray-level retries are generous: its block markers count the deaths a budget allows."""

from __future__ import annotations

from actors.pool import LOST_NODE_RESTARTS, PoolSpec


def test_ray_retries_are_generous_where_the_markers_count_deaths():
    assert PoolSpec(max_restarts=3, max_task_retries=3).counted_retry_options() == {
        "max_restarts": 3 + LOST_NODE_RESTARTS,
        "max_task_retries": -1,  # a retry spent on ActorUnavailableError while the actor moves costs nothing
    }
    assert PoolSpec(max_restarts=-1).counted_retry_options()["max_restarts"] == -1
