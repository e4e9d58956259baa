"""Per-pair instructions, saved prompts, truncation you can see and choose, classic cross-encoders: the
worker (no Ray) against `CrossEncoder.predict` with each row's own prompt."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from sentence_transformers import CrossEncoder

from actors.reranker.features import Featurizer
from actors.reranker.spec import RerankerSpec, default_prompt
from actors.reranker.truncation import document_first, truncation_warning, untruncated
from actors.reranker.worker import RerankWorker
from pipelines.inputs.sources import open_source
from pipelines.rerank.validate import instruction_digest, validate_pairs
from schemas import columns as c
from schemas.settings import SettingError
from schemas.tables import PAIRS_SCHEMA, InputError, check_pairs_schema
from tests.tiny_models import build_bert_cross_encoder

PAIRS = [
    ("q0", "d0", "ray data streams", "blocks to actors that hold models", None),
    ("q0", "d1", "ray data streams", "score pairs and hold data", "Judge the match."),
    ("q0", "d2", "ray data streams", "models", ""),  # an empty instruction: no prompt at all
    ("q1", "d0", "what holds models", "actors hold models and score pairs", "Is it relevant?"),
    ("q1", "d1", "what holds models", "data " * 40, None),
    ("q1", "d2", "what holds models", "streams of blocks", "Judge the match."),
]


@pytest.fixture(scope="module")
def bert(models_dir):
    return build_bert_cross_encoder(models_dir / "bert-unit", seed=3)


@pytest.fixture(scope="module")
def bert3(models_dir):
    return build_bert_cross_encoder(models_dir / "bert3-unit", num_labels=3, seed=4)


def pairs_table(rows=PAIRS) -> pa.Table:
    names = [c.QUERY_ID, c.CANDIDATE_ID, "query_text", "candidate_text", c.INSTRUCTION]
    return validate_pairs(pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows]))


def predict_per_row(model: CrossEncoder, rows, run_prompt=None, prompt_name=None, label=None) -> np.ndarray:
    """`predict` row by row: each row with its own instruction as the prompt, else the run's."""
    out = np.zeros(len(rows), np.float32)
    for k, r in enumerate(rows):
        prompt = r[4] if r[4] is not None else run_prompt
        got = model.predict(
            [(r[2], r[3])], prompt=prompt, prompt_name=None if r[4] is not None else prompt_name
        )
        out[k] = got[0] if label is None else got[0][label]
    return out


@pytest.mark.parametrize(
    ("fixture", "run_prompt"), [("qwen3_causal", None), ("llama_st_10", None), ("bert", "judge: ")]
)
def test_instruction_per_pair_scores_equal_predict_with_that_prompt(request, fixture, run_prompt):
    model_dir = str(request.getfixturevalue(fixture))
    worker = RerankWorker(RerankerSpec(model=model_dir, prompt=run_prompt, max_length=48).validate())
    out = worker(pairs_table())
    want = predict_per_row(CrossEncoder(model_dir, max_length=48), PAIRS, run_prompt)
    np.testing.assert_allclose(out.column(c.SCORE).to_numpy(), want, atol=1e-5, rtol=0)
    # An instruction changes the score: the rows are not scored with the run's prompt.
    plain = predict_per_row(
        CrossEncoder(model_dir, max_length=48), [(*r[:4], None) for r in PAIRS], run_prompt
    )
    assert not np.allclose(plain[[1, 3, 5]], want[[1, 3, 5]], atol=1e-6)
    # Truncated: the rows whose untruncated rendering (with their own prompt) is over 48 tokens.
    probe = CrossEncoder(model_dir)
    default = probe.prompts.get(probe.default_prompt_name) if probe.default_prompt_name else None
    prompts = [r[4] if r[4] is not None else run_prompt or default for r in PAIRS]
    full = [
        int(probe.preprocess([(r[2], r[3])], prompt=p)["attention_mask"].sum())
        for r, p in zip(PAIRS, prompts, strict=True)
    ]
    assert out.column(c.ROW_TRUNCATED).to_pylist() == [n > 48 for n in full]
    assert full[4] > 48


def test_prompt_name_selects_a_saved_prompt_and_is_refused_when_absent(llama_st_10, bert):
    spec = RerankerSpec(model=str(llama_st_10), prompt_name="judge", max_length=48).validate()
    model = CrossEncoder(str(llama_st_10), max_length=48)
    assert default_prompt(spec, model) == "Judge: does the document answer?"
    rows = [(*r[:4], None) for r in PAIRS]
    got = RerankWorker(spec)(pairs_table(rows)).column(c.SCORE).to_numpy()
    np.testing.assert_allclose(got, predict_per_row(model, rows, prompt_name="judge"), atol=1e-5, rtol=0)

    with pytest.raises(SettingError) as err:
        RerankerSpec(model=str(llama_st_10), prompt_name="nope").validate()
    assert (
        err.value.path == ("prompt_name",) and "'nope'" in err.value.problem and "judge" in err.value.problem
    )
    with pytest.raises(SettingError, match="no saved prompts"):
        RerankerSpec(model=str(bert), prompt_name="judge").validate()
    with pytest.raises(SettingError, match="not both") as err:
        RerankerSpec(model=str(llama_st_10), prompt="x", prompt_name="judge").validate()
    assert err.value.path == ("prompt_name",)


def test_a_model_with_several_labels_needs_label(bert3, bert, qwen3_causal):
    with pytest.raises(SettingError, match="3 labels; pass --label N") as err:
        RerankerSpec(model=str(bert3)).validate()
    assert err.value.path == ("label",)
    with pytest.raises(SettingError, match="not a label"):
        RerankerSpec(model=str(bert3), label=3).validate()
    RerankerSpec(model=str(bert)).validate()  # one label, no --label needed
    RerankerSpec(model=str(qwen3_causal)).validate()  # a causal LM: LogitScore, one score

    rows = [(*r[:4], None) for r in PAIRS]
    spec = RerankerSpec(model=str(bert3), label=2, max_length=48).validate()
    got = RerankWorker(spec)(pairs_table(rows)).column(c.SCORE).to_numpy()
    want = predict_per_row(CrossEncoder(str(bert3), max_length=48), rows, label=2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def untruncated_lengths(model, pairs, prompt=None) -> list[int]:
    return [len(ids) for ids in untruncated(model, pairs, prompt)["input_ids"]]


@pytest.mark.parametrize("fixture", ["qwen3_causal", "bert"])
def test_truncation_count_is_exact_at_the_limit(request, fixture):
    model_dir = str(request.getfixturevalue(fixture))
    probe = CrossEncoder(model_dir)
    docs = ["models", "ray data streams blocks", "ray data streams blocks to", "data " * 30]
    pairs = [["what holds models", d] for d in docs]
    lengths = untruncated_lengths(probe, pairs)
    limit = lengths[1]  # the second pair fits exactly: reaching the limit is not being cut
    assert lengths[0] < limit < lengths[2] < lengths[3]
    model = CrossEncoder(model_dir, max_length=limit)
    for mode in ("model", "document"):
        out, bad = Featurizer(model, None, mode)(pairs)
        assert not bad
        assert [f.truncated for f in out] == [False, False, True, True]
        assert [f.tokens for f in out] == [lengths[0], limit, limit, limit]
    # The model's own cut is `predict`'s: the same ids as its preprocess.
    out, _ = Featurizer(model, None, "model")(pairs)
    mask = model.preprocess(pairs)["attention_mask"].bool()
    for f, ids, m in zip(out, model.preprocess(pairs)["input_ids"], mask, strict=True):
        assert f.ids.tolist() == ids[m].tolist()


def test_document_first_keeps_instruction_query_and_closing_turn(llama_st_10):
    # A chat reranker with an assistant turn to close: the kept ids are, token for token, the rendering up
    # to the document, the document's first tokens, then the template's closing turn.
    model = CrossEncoder(str(llama_st_10), max_length=90)
    tok = model.tokenizer
    query, doc, instruction = "what holds models and data", "actors hold models " * 20, "Is it relevant?"
    out, _ = Featurizer(model, None, "document")([[query, doc]], [instruction])
    row = out[0]
    head = tok(
        f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>query\n{query}<|im_end|>\n"
        "<|im_start|>document\n",
        add_special_tokens=False,
    )["input_ids"]
    closing = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    body = tok(doc, add_special_tokens=False)["input_ids"]
    keep = 90 - len(head) - len(closing)
    assert row.truncated and row.tokens == 90 and keep > 0
    assert row.ids.tolist() == head + body[:keep] + closing
    # The model's own cut keeps the closing turn too (restored), and cuts the same document here.
    model_cut, _ = Featurizer(model, None, "model")([[query, doc]], [instruction])
    assert model_cut[0].ids.tolist()[-len(closing) :] == closing


def test_document_first_keeps_a_classic_cross_encoders_query(bert):
    # BERT's own truncation (longest_first) cuts the longer side first: a long query loses tokens too.
    model = CrossEncoder(str(bert), max_length=24)
    tok = model.tokenizer
    query, doc = "ray data streams blocks to actors that hold models", "score pairs " * 20
    out, _ = Featurizer(model, "judge: ", "document")([[query, doc]])
    q = tok("judge: " + query, add_special_tokens=False)["input_ids"]
    d = tok(doc, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    keep = 24 - len(q) - 3
    assert out[0].ids.tolist() == [cls, *q, sep, *d[:keep], sep]
    assert out[0].seq["token_type_ids"].tolist() == [0] * (len(q) + 2) + [1] * (keep + 1)
    model_cut, _ = Featurizer(model, "judge: ", "model")([[query, doc]])
    assert model_cut[0].ids.tolist()[1 : len(q) + 1] != q  # predict's cut took query tokens
    # Scored: the forward of those ids, as the worker collates them.
    worker = RerankWorker(RerankerSpec(model=str(bert), prompt="judge: ", max_length=24, truncate="document"))
    rows = [("q", "d", query, doc, None)]
    scored = worker(pairs_table(rows))
    assert scored.column(c.ROW_TRUNCATED).to_pylist() == [True]
    feats = worker.collate(out)
    with torch.inference_mode():
        want = float(model.activation_fn(model(feats)["scores"]).squeeze())
    assert abs(scored.column(c.SCORE)[0].as_py() - want) < 1e-5


def test_document_first_gives_up_when_the_query_alone_is_over():
    full, empty = np.array([1, 5, 6, 7, 2, 9, 9, 3]), np.array([1, 5, 6, 7, 2, 3])
    assert document_first(full, empty, 7).tolist() == [0, 1, 2, 3, 4, 5, 7]
    assert document_first(full, empty, 6).tolist() == [0, 1, 2, 3, 4, 7]
    assert document_first(full, empty, 5) is None


def test_truncation_warning_over_five_percent():
    spec = RerankerSpec(model="org/name", max_length=64)
    assert truncation_warning(5, 100, spec) is None
    line = truncation_warning(6, 100, spec)
    assert "6 of 100" in line and "--max-length 64" in line and "--truncate document" in line
    assert "\n" not in line


def test_instruction_column_is_a_string_and_its_values_are_part_of_the_identity(tmp_path):
    import pyarrow.parquet as pq

    base = {c.QUERY_ID: ["q", "q"], c.CANDIDATE_ID: ["a", "b"], "query_text": ["x", "x"]}
    base["candidate_text"] = ["y", "z"]
    with pytest.raises(InputError, match="'instruction' has type int64, expected string"):
        check_pairs_schema(pa.table({**base, c.INSTRUCTION: [1, 2]}).schema, "p.parquet")

    def digest(values, name="p.parquet", rename=None):
        table = pa.table(base if values is None else {**base, c.INSTRUCTION: pa.array(values, pa.string())})
        if rename:
            table = table.rename_columns([rename if n == c.INSTRUCTION else n for n in table.column_names])
        pq.write_table(table, tmp_path / name)
        columns = {c.INSTRUCTION: rename} if rename else {}
        return instruction_digest(open_source(str(tmp_path / name), "auto", columns, PAIRS_SCHEMA))

    assert digest(None) is None
    one = digest(["a", None])
    assert one == digest(["a", None], "again.parquet") and one.startswith("sha256:")
    assert len({one, digest(["a", ""]), digest(["b", None]), digest([None, "a"])}) == 4
    assert digest(["a", None], "renamed.parquet", rename="task") == one  # --column instruction=task
