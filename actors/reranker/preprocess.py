"""The preprocess stage: each pair's features made once, on CPU workers, ahead of the scoring actors.

Ray Data runs `preprocess_block` as plain tasks, so preprocessing scales with the node's CPUs while the
actors only collate and run the model (as Ray Data LLM and NeMo Curator split it). Each worker process
loads the reranker's preprocessing once (tokenizer, processor, chat template, prompts: the model on the
meta device, no weight read) and keeps it for every block it is given.

Rows already failed, or answered by the score cache, pass through untouched (a block of only such rows
loads nothing). A pair that cannot be built
or preprocessed becomes an error row (stage `score`). Decoded media and the content columns the later
stages do not need are dropped here: what travels to the actor is ids, features and the ranked table's
columns.
"""

from __future__ import annotations

import pyarrow as pa

from actors.media.loader import PAYLOAD_COLUMNS
from actors.reranker.fast_paths import apply_fast_paths
from actors.reranker.features import Featurizer
from actors.reranker.spec import RerankerSpec
from actors.reranker.worker import RerankWorker, default_prompt, featurize_rows, load_cross_encoder
from actors.rows import RowErrors, replace_columns

_FEATURIZERS: dict[tuple, Featurizer] = {}  # per worker process: one load per (spec, worker class)


def featurizer_for(spec: RerankerSpec, worker_cls: type[RerankWorker] = RerankWorker) -> Featurizer:
    """The spec's preprocessing, loaded once per process: the modules the actor scores with, and the
    featurizer `worker_cls` makes for them."""
    key = (spec, worker_cls)
    if key not in _FEATURIZERS:
        import torch

        torch.set_num_threads(1)  # a CPU task: one core, one thread
        model = apply_fast_paths(load_cross_encoder(spec, weights=False), spec.score_path, spec.fp32_head)
        featurizer = worker_cls.make_featurizer(model, default_prompt(spec, model))
        _FEATURIZERS[key] = featurizer.with_truncation(spec.truncate)
    return _FEATURIZERS[key]


def preprocess_block(
    table: pa.Table,
    spec: RerankerSpec,
    drop: tuple[str, ...] = (),
    worker_cls: type[RerankWorker] = RerankWorker,
) -> pa.Table:
    """A `map_batches` function: the block with `__input_ids`, `__features`, `__tokens` added, failures in
    `__error`, and decoded media plus the columns `drop` removed."""
    columns = featurize_rows(table, lambda: featurizer_for(spec, worker_cls), RowErrors(table, "score"))
    gone = {*PAYLOAD_COLUMNS, *drop}
    return replace_columns(table.drop_columns([n for n in table.column_names if n in gone]), columns)
