"""`python -m jobs.bench.nodes` parses its settings and refuses bad ones (no Ray: nothing runs)."""

from __future__ import annotations

import pytest

from jobs.bench.nodes import parse_args


def test_node_scaling_arguments_parse_and_bad_ones_are_refused():
    args = parse_args(["--rate", "150", "--rounds", "3", "--output", "r.json"])
    assert (args.rate, args.rounds, args.output, args.num_pairs) == (150.0, 3, "r.json", 10000)
    for bad in (["--rate", "0"], ["--rounds", "0"], ["--num-pairs", "1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
