"""The reranker actor: a frozen spec checked on the driver, and a worker that holds a CrossEncoder.

Each pair is preprocessed once, by the model's own `preprocess` (chat template, prompt, truncation, the
tokens media items expand to), normally on CPU workers ahead of the actor (`actors.reranker.preprocess`); the worker
sorts rows by their real token count, packs micro-batches under a token budget, collates them and runs the
forward + activation, exactly as `CrossEncoder.predict` does per batch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from actors.media.loader import PAYLOAD_COLUMNS
from actors.model_source import check_loaded, source_fingerprint
from actors.reranker.fast_paths import PrefixReuse, apply_fast_paths, finish_scores
from actors.reranker.features import Collator, Featurizer, RowFeatures, from_table, to_columns
from actors.reranker.pairs import build_pairs, instructions
from actors.reranker.quarantine import KILLED, Quarantine
from actors.reranker.spec import RerankerSpec, check_labels, default_prompt, load_cross_encoder
from actors.rows import RowErrors, column_or_nulls, isolate_failures, replace_columns
from actors.token_budget import MicroBatch, pack_by_groups
from schemas import columns as c
from schemas.stages import Stage

BASELINE_BATCH_ROWS = 32  # CrossEncoder.predict's default batch size, for the padding baseline
# A row joins a micro-batch only if it is >= 90% as long as the batch's longest: on skewed lengths this
# keeps padding efficiency near 0.95 at the default budget (README, "Throughput": 0.96 on skewed pairs).
PACK_MIN_FILL = 0.9


# The scoring stage's contract: it reads both sides' content (and their payloads when there is media) and
# adds the score, per-row errors and the token and timing columns the manifest sums.
SCORE = Stage(
    "score",
    needs=(c.ROW_ERROR, c.ROW_STAGE, *c.QUERY_CONTENT, *c.CANDIDATE_CONTENT),
    adds=(
        c.SCORE,
        c.ROW_ERROR,
        c.ROW_STAGE,
        c.ROW_TOKENS,
        c.ROW_PADDED,
        c.ROW_UNSORTED_PADDED,
        c.ROW_TRUNCATED,
        *c.ACTOR_TIME.values(),
        c.ROW_FORWARD_START,
        c.ROW_FORWARD_END,
    ),
)


def non_finite_reason(value: float, model) -> str:
    """The error of a pair whose score came out NaN or infinite: named, with its usual causes."""
    dtype = getattr(model, "dtype", None)
    return (
        f"non-finite score {value} (model dtype {dtype}): an fp16 overflow or a broken checkpoint; "
        "try --dtype bfloat16 or float32"
    )


class RerankWorker:
    """Ray Data callable class: one CrossEncoder per actor, `__call__(pa.Table) -> pa.Table`.

    A block normally arrives preprocessed (`actors.reranker.preprocess`: `__input_ids` / `__features` made on CPU
    workers); a block without them is preprocessed here, once. Rows are sorted by real token length, packed
    into micro-batches under the token budget, collated (re-padded to each batch's longest row) and scored
    with the model's forward + activation, as `CrossEncoder.predict` does per batch. Scores go back to the
    row they came from, whatever order batches finish in. The actor's time splits into collate, forward and
    write-back, kept on the block's first row for the manifest."""

    source: str | None = None  # the fingerprint of the model's bytes as loaded (None: nothing to compare)
    model = None  # loaded by `load`, on the first block that has a pair to score

    def __init__(self, spec: RerankerSpec, torch_threads: int | None = None):
        self.spec, self.torch_threads = spec, torch_threads
        self.clock = _Clock()

    def load(self) -> RerankWorker:
        """Load the model, once, when the first block with a pair to score arrives: an actor whose blocks
        are all answered by the score cache (an unchanged night) or all failed never reads the weights."""
        if self.model is not None:
            return self
        import torch

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        spec = self.spec
        self.source = source_fingerprint(spec.model)  # of the bytes about to be loaded; checked per block
        self.model = self.load_model(spec)
        self.device = self.model.device
        self.prefix = PrefixReuse(self.model) if spec.prefix_reuse else None
        self.prompt = default_prompt(spec, self.model)
        check_labels(spec, self.model.num_labels)
        self.featurize = self.make_featurizer(self.model, self.prompt).with_truncation(spec.truncate)
        self.collate = Collator.probe(self.model, self.prompt)
        return self

    @classmethod
    def make_featurizer(cls, model, prompt: str | None) -> Featurizer:
        """The preprocessing this worker's pairs get, here and in the preprocess stage (a test double can
        count calls)."""
        return Featurizer(model, prompt)

    def load_model(self, spec: RerankerSpec):
        model = apply_fast_paths(load_cross_encoder(spec), spec.score_path, spec.fp32_head)
        model.eval()
        return model

    # -- scoring primitives (overridable by tests: a double can reorder the batches it yields) ---------

    def token_lengths(self, pairs: list) -> np.ndarray:
        """Real tokens per pair after the model's own preprocessing, media tokens included."""
        features, bad = self.load().featurize(pairs)
        if bad:
            raise ValueError(next(iter(bad.values())))
        return np.asarray([f.tokens for f in features], dtype=np.int64)

    def forward(self, features: dict) -> np.ndarray:
        """One collated micro-batch through the model and its activation: fp32 scores on the host."""
        import torch
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode():
            features = batch_to_device(features, self.device)
            scores = finish_scores(self.model, self.model(features)["scores"])
        # A model with several labels: the one logit the user chose (`label`) is the score.
        return scores[:, self.spec.label] if scores.ndim > 1 else scores

    def score_batch(self, rows: list[RowFeatures]) -> np.ndarray:
        """Collate one micro-batch and run it (timed: collate, forward)."""
        t0 = time.perf_counter()
        features = self.collate(rows)
        t1 = time.perf_counter()
        self.clock.started = self.clock.started or time.time()
        scores = self.forward(features)
        t2 = time.perf_counter()
        self.clock.collate_s += t1 - t0
        self.clock.forward_s += t2 - t1
        self.clock.ended = time.time()
        return scores

    def score_batches(
        self, rows: list[RowFeatures], batches: list[MicroBatch]
    ) -> Iterator[tuple[MicroBatch, np.ndarray]]:
        for batch in batches:
            yield batch, self.score_batch([rows[i] for i in batch.rows])

    # -- the Ray Data entry point ----------------------------------------------------------------

    def __call__(
        self,
        table: pa.Table,
        attempts_dir: str | None = None,
        commit=None,
        drop=(),
        fingerprint=None,
        death_budget: int = -1,
    ) -> pa.Table:
        """Score a block. `attempts_dir`: where blocks being scored leave a marker, so that a block whose
        scoring kills the actor is bisected on its retries (`actors.reranker.quarantine`); None: no markers.
        `commit`: a function that makes the scored block durable (a checkpoint piece) and returns what the
        stage outputs instead of the rows; it runs here, as the block's last step, so a block is committed
        as soon as it is scored. `drop`: more columns to leave out of the output where present (the content
        columns, still here when this actor preprocessed the block). `fingerprint`: the model's fingerprint
        as the driver computed it for the run; an actor that loaded other bytes fails the run
        (`ModelChanged`) instead of scoring with them. `death_budget`: how often a block may kill its actor
        on a node still alive before the run stops (-1: no limit; deaths with a lost node are free)."""
        self.clock = _Clock()
        n = table.num_rows
        errors = RowErrors(table, "score")
        if any(errors.ok(i) and v is None for i, v in enumerate(column_or_nulls(table, c.ROW_CACHED_SCORE))):
            check_loaded(self.spec.model, self.load().source, fingerprint)
        scores = np.full(n, np.nan, dtype=np.float32)
        padded = np.zeros(n, dtype=np.int64)
        unsorted_padded = np.zeros(n, dtype=np.int64)
        cached = column_or_nulls(table, c.ROW_CACHED_SCORE)
        for i, value in enumerate(cached):
            if value is not None and errors.ok(i):
                scores[i] = value
        if c.ROW_INPUT_IDS not in table.column_names:  # not through the preprocess stage: made here, once
            t0 = time.perf_counter()
            table = replace_columns(table, featurize_rows(table, lambda: self.featurize, errors))
            self.clock.preprocess_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = table.column(c.ROW_TOKENS).to_numpy().astype(np.int64)
        rows = np.asarray([i for i in range(n) if errors.ok(i) and cached[i] is None], dtype=np.int64)
        if len(rows):
            features = from_table(table, rows)
            for start in range(0, len(rows), BASELINE_BATCH_ROWS):
                chunk = rows[start : start + BASELINE_BATCH_ROWS]
                unsorted_padded[chunk] = tokens[chunk].max()
            self.clock.collate_s += time.perf_counter() - t0
            out = (scores, padded, errors)
            guard = self._quarantine(table, rows, attempts_dir, death_budget)
            if not guard.suspect:
                guard.start()
                self._score_rows(table, rows, features, tokens, *out)
            else:  # an earlier attempt of this block died with its actor: score it in parts
                for lo, hi in guard.parts():
                    part = np.arange(lo, hi)
                    self._score_rows(table, rows[part], [features[k] for k in part], tokens, *out)
                    guard.record(part, scores[rows[part]], [errors.reasons[i] for i in rows[part]])
                for pos, (score, reason) in guard.done.items():
                    scores[rows[pos]] = np.nan if score is None else score
                    if reason is not None:
                        errors.fail(rows[pos], reason)
                for pos in guard.killers:
                    errors.fail(rows[pos], KILLED)
            guard.finish()
        t_write = time.perf_counter()
        # Features and decoded media stay here: the scored rows carry ids, scores and references.
        drop = [*PAYLOAD_COLUMNS, c.ROW_INPUT_IDS, c.ROW_FEATURES, *drop]
        out = table.drop_columns([name for name in table.column_names if name in drop])
        ok = np.asarray([errors.ok(i) for i in range(n)], dtype=bool)
        columns = {
            c.SCORE: pa.array(scores, pa.float32(), mask=~ok | np.isnan(scores)),
            **errors.columns(),
            c.ROW_TOKENS: pa.array(tokens),
            c.ROW_PADDED: pa.array(padded),
            c.ROW_UNSORTED_PADDED: pa.array(unsorted_padded),
        }
        self.clock.write_s = time.perf_counter() - t_write
        out = replace_columns(out, {**columns, **self.clock.columns(n)})
        if commit is None:
            return out
        # The commit's own time is write-back too: counted into the piece it writes.
        t_write = time.perf_counter() - t_write
        return commit(
            out.set_column(out.schema.get_field_index(c.ROW_WRITE_S), c.ROW_WRITE_S, _first(t_write, n))
        )

    def _quarantine(
        self, table: pa.Table, rows: np.ndarray, attempts_dir: str | None, budget: int = -1
    ) -> Quarantine:
        if attempts_dir is None or c.ROW_KEY not in table.column_names:
            return Quarantine(None, rows, [])
        keys = table.column(c.ROW_KEY).to_numpy()[rows]
        first = rows[:5]
        qids, cids = (
            table.column(name).take(pa.array(first)).to_pylist() for name in (c.QUERY_ID, c.CANDIDATE_ID)
        )
        ids = [f"{q}/{d}" for q, d in zip(qids, cids, strict=True)]
        return Quarantine(attempts_dir, keys, ids, budget=budget)

    def _score_rows(self, table, rows, features, tokens, scores, padded, errors) -> None:
        """Score `rows` of the block (their `features`), writing scores, padded lengths and failures."""
        for batch, batch_scores, failed in self._score_isolating_failures(
            table, rows, features, tokens[rows]
        ):
            targets = rows[batch.rows]
            values = np.asarray(batch_scores, dtype=np.float32).reshape(len(targets))
            scores[targets] = values
            for k, reason in failed.items():
                errors.fail(targets[k], reason)
            for k in np.flatnonzero(~np.isfinite(values)):
                if k not in failed:
                    errors.fail(targets[k], non_finite_reason(values[k], self.model))
            padded[targets] = batch.padded_length

    def _score_isolating_failures(self, table, rows, features, lengths):
        """Yield (batch, scores, {index in batch: reason}) for every micro-batch. If scoring raises, each
        batch not yet finished is scored again through `isolate_failures`: whole, and if that raises, pair by
        pair, so a single bad pair becomes one error row and the rest of its batch is still scored."""
        if self.prefix is not None:  # micro-batches never mix queries, so each shares one prefix
            yield from self._prefix_batches(table, rows, lengths)
            return
        groups = [f.signature() for f in features]
        batches = pack_by_groups(lengths, groups, self.spec.batch_tokens, PACK_MIN_FILL)
        done: set[int] = set()
        try:
            for batch, values in self.score_batches(features, batches):
                done.add(id(batch))
                yield batch, values, {}
        except Exception:
            for batch in batches:
                if id(batch) not in done:
                    batch_rows = [features[i] for i in batch.rows]
                    yield batch, *isolate_failures(self.score_batch, batch_rows, "scoring failed", np.nan)

    def _prefix_batches(self, table, rows, lengths):
        """Prefix reuse scores from the pairs' text (its own tokenisation of prefix and suffixes)."""
        pairs, _ = build_pairs(table, list(rows), self.model)
        prompts = [self.prompt if p is None else p for p in instructions(table, list(rows))]
        # A batch shares its query and its prompt (the pair's instruction, else the run's).
        groups = [
            (p[0], prompt) if isinstance(p[0], str) else None
            for p, prompt in zip(pairs, prompts, strict=True)
        ]
        for batch in pack_by_groups(lengths, groups, self.spec.batch_tokens, PACK_MIN_FILL):
            batch_pairs = [pairs[i] for i in batch.rows]
            score = functools.partial(self.prefix.score, prompt=prompts[batch.rows[0]])
            self.clock.started = self.clock.started or time.time()
            t0 = time.perf_counter()
            yield batch, *isolate_failures(score, batch_pairs, "scoring failed", np.nan)
            self.clock.forward_s += time.perf_counter() - t0
            self.clock.ended = time.time()


def _first(value: float | None, n: int, rest: float | None = 0.0) -> pa.Array:
    """A block's value on its first row, `rest` on the others (so sums over rows give the block's)."""
    return pa.array([value, *[rest] * (n - 1)][:n], pa.float64())


@dataclass
class _Clock:
    """The scoring actor's time on one block."""

    preprocess_s: float = 0.0  # only when the actor preprocesses the block itself
    collate_s: float = 0.0
    forward_s: float = 0.0
    write_s: float = 0.0
    started: float | None = None
    ended: float | None = None

    def columns(self, n: int) -> dict[str, pa.Array]:
        return {
            c.ROW_PREPROCESS_S: _first(self.preprocess_s, n),
            c.ROW_COLLATE_S: _first(self.collate_s, n),
            c.ROW_FORWARD_S: _first(self.forward_s, n),
            c.ROW_WRITE_S: _first(self.write_s, n),
            c.ROW_FORWARD_START: _first(self.started, n, None),
            c.ROW_FORWARD_END: _first(self.ended, n, None),
        }


def featurize_rows(table: pa.Table, featurizer: Callable[[], Featurizer], errors: RowErrors) -> dict:
    """Features (`actors.reranker.features.to_columns`) for the rows of a block still to score (not failed, no
    cached score); rows that cannot be built or preprocessed are failed in `errors` (and returned with
    its columns). `featurizer()` is called only when there is such a row (it may load the model)."""
    cached = column_or_nulls(table, c.ROW_CACHED_SCORE)
    todo = [i for i in range(table.num_rows) if errors.ok(i) and cached[i] is None]
    if not todo:
        return {**to_columns([None] * table.num_rows), **errors.columns()}
    featurize = featurizer()
    pairs, build_errors = build_pairs(table, todo, featurize.model)
    for i, reason in build_errors.items():
        errors.fail(i, reason)
    rows = [i for i in todo if i not in build_errors]
    features: list[RowFeatures | None] = [None] * table.num_rows
    made, bad = featurize(pairs, instructions(table, rows))
    for k, i in enumerate(rows):
        if k in bad:
            errors.fail(i, bad[k])
        else:
            features[i] = made[k]
    return {**to_columns(features), **errors.columns()}
