"""Which rows of a scored piece its own task may rank (the shuffle-free path for query-clustered input)."""

from __future__ import annotations

import pyarrow as pa

from pipelines.rerank.rank import edges_are_apart, split_piece


def piece(keys, queries):
    return pa.table({"__row_key": pa.array(keys, pa.int64()), "query_id": queries})


def local_queries(table):
    local, edge, _ = split_piece(table)
    assert (local ^ edge).all()  # every row is exactly one of the two
    ids = table.column("query_id").to_pylist()
    return sorted({q for q, x in zip(ids, local, strict=True) if x})


def test_queries_inside_a_run_are_local_and_those_at_its_ends_are_not():
    # One run of keys 0..9: a opens it and d closes it, so either may continue in another piece.
    t = piece(range(10), list("aabbbccddd"))
    assert local_queries(t) == ["b", "c"]


def test_row_order_in_the_piece_does_not_matter():
    t = piece([5, 0, 9, 3, 1, 2, 4, 6, 7, 8], [None] * 10)
    ids = dict(zip(range(10), "aabbbccddd", strict=True))
    t = t.set_column(1, "query_id", pa.array([ids[k] for k in t.column("__row_key").to_pylist()]))
    assert local_queries(t) == ["b", "c"]


def test_a_gap_in_the_keys_ends_a_run():
    # Keys 0..4 and 100..104 (two blocks of different row groups scored together): b touches the end of
    # the first run, c the start of the second; x and y are inside their runs.
    t = piece([0, 1, 2, 3, 4, 100, 101, 102, 103, 104], list("axxbbccyyz"))
    assert local_queries(t) == ["x", "y"]


def test_a_query_split_within_a_run_is_not_local():
    # b's rows are not one stretch of keys: the input is not clustered there.
    t = piece(range(8), list("abbcbbdd"))
    assert local_queries(t) == ["c"]


def test_a_query_spanning_a_gap_is_not_local():
    # b runs from key 1 across the gap to key 51; c sits inside the second run (50..53).
    t = piece([0, 1, 2, 3, 50, 51, 52, 53], list("abbbbbcd"))
    assert local_queries(t) == ["c"]


def test_empty_piece_and_disjointness():
    local, edge, clustered = split_piece(piece([], pa.array([], pa.string())))
    assert clustered
    assert len(local) == len(edge) == 0
    assert edges_are_apart({"a", "b"}, pa.array(["c", "c", "d"]))
    assert not edges_are_apart({"a", "b"}, pa.array(["c", "b"]))


def test_more_than_two_edge_queries_a_run_means_not_clustered():
    assert split_piece(piece(range(10), list("aabbbccddd")))[2]  # a and d: the run's two ends
    assert split_piece(piece([0, 1, 2, 3, 4, 100, 101], list("aabbbcc")))[2]  # two runs, three edge queries
    # Shuffled input: queries interleave, every one of them is an edge query of the single run.
    assert not split_piece(piece(range(9), list("abcabcabc")))[2]
