"""Turn one side of a block (`query_*`, `candidate_*` or `doc_*` columns) into the inputs sentence-transformers
takes. The one element builder: the embedder calls it for its side, `actors.reranker.pairs` for each side of a
pair, so both report the same reasons.

A row with only text is the string; a row with media is a dict `{"text": ..., "image": ...}` exactly as
sentence-transformers takes it, where each media value is the in-memory object the media stage decoded into
`__<prefix>_<modality>` (never the reference string: a missing file must not be scored or embedded as if its
path were text).
"""

from __future__ import annotations

import pyarrow as pa

from schemas import columns as c


def build_elements(table: pa.Table, prefix: str, rows: list[int], model=None) -> tuple[list, dict[int, str]]:
    """Return (inputs for `rows` that can be built, {row: reason} for the others), in `rows` order.

    With `model` (anything with sentence-transformers' `supports` and `modalities`), a row whose modalities
    the model does not take is a reason too. A media reference without a payload means the media stage did
    not run on it, which is a reason, not a cue to use the reference string."""
    from actors.media.codec import payload_inputs

    values = {
        m: table.column(f"{prefix}_{m}").to_pylist()
        for m in c.MODALITIES
        if f"{prefix}_{m}" in table.column_names
    }
    # Decoded once per distinct payload: every row sharing a reference gets the same in-memory object.
    payloads = {
        m: payload_inputs(m, table.column(c.media_payload_column(f"{prefix}_{m}")))
        for m in c.MEDIA_MODALITIES
        if c.media_payload_column(f"{prefix}_{m}") in table.column_names
    }
    inputs: list = []
    errors: dict[int, str] = {}
    for i in rows:
        element, reason = _element(i, prefix, values, payloads)
        if reason is None and model is not None:
            reason = _unsupported(model, prefix, element, values, i)
        if reason is None:
            inputs.append(element["text"] if list(element) == ["text"] else element)
        else:
            errors[i] = reason
    return inputs, errors


def _element(i: int, prefix: str, values: dict[str, list], payloads: dict[str, list]):
    """({modality: input} for row `i`, None), or (None, the reason it cannot be built)."""
    element: dict = {}
    for modality, column in values.items():
        ref = column[i]
        if ref is None:
            continue
        if modality == "text":
            element["text"] = ref
            continue
        payload = payloads.get(modality)
        if payload is None or payload[i] is None:
            return None, f"{prefix}_{modality} {ref!r} was not fetched by the media stage"
        element[modality] = payload[i]
    if not element:
        return None, f"{prefix} has no content: {prefix}_text/_image/_audio/_video all null"
    return element, None


def _unsupported(model, prefix: str, element: dict, values: dict[str, list], row: int) -> str | None:
    """None when the model takes the element, else e.g. "unsupported modality: candidate_audio 'a.wav' is
    audio; the model takes text, image, video"."""
    mods = tuple(sorted(element))
    if model.supports(mods[0] if len(mods) == 1 else mods):
        return None
    takes = ", ".join(m for m in model.modalities if m != "message")
    missing = [m for m in mods if not model.supports(m)]
    if missing:
        refs = ", ".join(f"{prefix}_{m} {values[m][row]!r}" for m in missing)
        return f"unsupported modality: {refs} is {'/'.join(missing)}; the model takes {takes}"
    combined = "+".join(mods)
    return f"unsupported modality: {prefix} combines {combined}; the model takes them only one at a time"
