"""`CrossEncoder.predict` as a user's own script runs it, the `--scale` baseline that starts as `jobs.rerank`
does: a fresh process that imports the libraries, reads the pairs Parquet, loads the model, predicts at the
library's default batch size (32), ranks each query's candidates with Arrow and writes one Parquet file.

    python -m jobs.bench.predict_script --pairs DIR --model M --output FILE [--threads N]
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.bench.data import text_pairs


def rank_per_query(table: pa.Table, scores: np.ndarray) -> pa.Table:
    """`query_id, candidate_id, score, rank`: by query, best first (rank 1)."""
    out = pa.table(
        {
            "query_id": table.column("query_id"),
            "candidate_id": table.column("candidate_id"),
            "score": pa.array(scores, pa.float32()),
        }
    ).sort_by([("query_id", "ascending"), ("score", "descending")])
    queries = out.column("query_id").combine_chunks()
    starts = np.flatnonzero(
        np.r_[True, pc.not_equal(queries[1:], queries[:-1]).to_numpy(zero_copy_only=False)]
    )
    sizes = np.diff(np.r_[starts, len(out)])
    rank = np.arange(len(out)) - np.repeat(starts, sizes) + 1
    return out.append_column("rank", pa.array(rank, pa.int32()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="Parquet file or directory of pairs")
    parser.add_argument("--model", required=True, help="CrossEncoder directory")
    parser.add_argument("--output", required=True, help="ranked Parquet file to write")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import CrossEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    table = pq.read_table(args.pairs, columns=["query_id", "candidate_id", "query_text", "candidate_text"])
    model = CrossEncoder(args.model, device="cpu")
    scores = model.predict(text_pairs(table), show_progress_bar=False)
    pq.write_table(rank_per_query(table, np.asarray(scores)), args.output)


if __name__ == "__main__":
    main()
