"""Bisection convicts only on evidence: a pair becomes a KILLED error only after it alone killed an actor
twice; a single unrelated death costs a retry; a death whose node left the cluster costs neither budget nor
evidence. Driven through the markers exactly as a dying actor leaves
them (an attempt that dies never reaches `finish`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.reranker.quarantine import BlockKeepsKilling, Quarantine, clear, count_faults, describe_stuck


def arrive(directory, n: int) -> Quarantine:
    """An actor picks up the block (keys 0..n-1)."""
    return Quarantine(str(directory), np.arange(n), [f"q/d{i}" for i in range(n)])


def attempt(directory, n: int, killer: int | None) -> tuple[Quarantine, bool]:
    """One attempt at the block: True when it finished, False when the actor died (at the killer)."""
    guard = arrive(directory, n)
    if not guard.suspect:
        guard.start()
        if killer is not None:
            return guard, False
        guard.finish()
        return guard, True
    for lo, hi in guard.parts():
        if killer is not None and lo <= killer < hi:
            return guard, False
        guard.record(np.arange(lo, hi), np.ones(hi - lo), [None] * (hi - lo))
    guard.finish()
    return guard, True


def test_one_unrelated_death_of_a_one_row_block_does_not_convict_its_pair(tmp_path):
    guard = arrive(tmp_path, 1)
    guard.start()  # ... and the node holding the actor is lost
    retry, finished = attempt(tmp_path, 1, killer=None)
    assert finished and retry.killers == [] and retry.done == {0: [1.0, None]}
    assert describe_stuck(str(tmp_path)) is None


def test_a_real_killer_is_convicted_after_it_alone_killed_two_actors(tmp_path):
    attempts = []
    while True:
        guard, finished = attempt(tmp_path, 8, killer=5)
        attempts.append(finished)
        if finished:
            break
    assert guard.killers == [5]
    assert sorted(guard.done) == [0, 1, 2, 3, 4, 6, 7]
    # whole block, half, quarter, alone, alone again: five deaths, then the finishing attempt
    assert attempts == [False] * 5 + [True]


def test_only_blocks_that_died_are_named_and_a_resume_clears_the_markers(tmp_path):
    in_flight = arrive(tmp_path, 4)
    in_flight.start()  # the driver died while this block was being scored: no death of its own
    assert describe_stuck(str(tmp_path)) is None
    attempt(tmp_path / "other", 8, killer=0)
    attempt(tmp_path / "other", 8, killer=0)  # a retry died too
    message = describe_stuck(str(tmp_path / "other"))
    assert message.startswith("1 block(s) kept killing their scoring actor")
    marker = json.loads(next((tmp_path / "other").glob("*.json")).read_text())
    assert marker["deaths"] == 1 and marker["trying"] == [0, 4]
    clear(str(tmp_path))
    assert not tmp_path.exists()


def test_a_death_with_its_node_lost_costs_no_budget_and_no_evidence(tmp_path):
    gone = {"node-a"}
    first = Quarantine(str(tmp_path), np.arange(8), [f"q/d{i}" for i in range(8)], node="node-a")
    first.start()  # ... and node-a is removed from the cluster with the actor on it
    retry = Quarantine(
        str(tmp_path), np.arange(8), [], budget=0, alive=lambda n: n not in gone, node="node-b"
    )
    assert retry.suspect and retry.node_lost
    assert list(retry.parts()) == [(0, 8)]  # the whole block again, not halved; within a budget of 0
    assert retry.deaths == 0 and retry.killers == [] and describe_stuck(str(tmp_path)) is None
    assert count_faults(str(tmp_path)) == {"actor_restarts": 1, "actor_restarts_node_lost": 1}


def test_deaths_on_live_nodes_count_against_the_budget_and_name_the_block(tmp_path):
    guard = arrive(tmp_path, 8)
    guard.start()  # died on a live node
    retry = Quarantine(str(tmp_path), np.arange(8), [f"q/d{i}" for i in range(8)], budget=1)
    assert next(retry.parts()) == (0, 4)  # the first death is within the budget: bisected
    again = Quarantine(str(tmp_path), np.arange(8), [f"q/d{i}" for i in range(8)], budget=1)
    with pytest.raises(BlockKeepsKilling, match="killed its scoring actor 2 times"):
        next(again.parts())
    assert describe_stuck(str(tmp_path)).startswith("1 block(s) kept killing their scoring actor")
    assert count_faults(str(tmp_path)) == {"actor_restarts": 2, "actor_restarts_node_lost": 0}
