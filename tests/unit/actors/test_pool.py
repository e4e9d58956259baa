"""The scoring stage's Ray-level retries are generous: its block markers count the deaths a budget allows.
Custom resources reach the actors' options as Ray's `resources`."""

from __future__ import annotations

import pytest

from actors.pool import LOST_NODE_RESTARTS, PoolSpec
from schemas.settings import SettingError


def test_ray_retries_are_generous_where_the_markers_count_deaths():
    assert PoolSpec(max_restarts=3, max_task_retries=3).counted_retry_options() == {
        "max_restarts": 3 + LOST_NODE_RESTARTS,
        "max_task_retries": -1,  # a retry spent on ActorUnavailableError while the actor moves costs nothing
    }
    assert PoolSpec(max_restarts=-1).counted_retry_options()["max_restarts"] == -1


def test_custom_resources_pass_through_to_the_actors_and_bad_ones_are_named():
    assert PoolSpec().custom_resources() == {}
    spec = PoolSpec(actor_resources=("accelerator=1", " node_a = 0.5 ")).validate()
    assert spec.custom_resources() == {"accelerator": 1.0, "node_a": 0.5}
    for bad in ("accelerator", "=1", "accelerator=-1", "accelerator=x", "CPU=1"):
        with pytest.raises(SettingError) as err:
            PoolSpec(actor_resources=(bad,)).validate()
        assert err.value.path == ("actor_resources",)
