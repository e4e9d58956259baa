"""Turn one side of a block (`doc_*` or `query_*` columns) into the inputs `SentenceTransformer.encode` takes.

A row with only text is a string; a row with media is a dict `{"text": ..., "image": ...}` exactly as
sentence-transformers takes it, where each media value is the in-memory object the media stage decoded into
`__<prefix>_<modality>` (never the reference string: a missing file must not be embedded as if its path
were text).
"""

from __future__ import annotations

import pyarrow as pa

from schemas import columns as c


def build_elements(table: pa.Table, prefix: str, rows: list[int], model=None) -> tuple[list, dict[int, str]]:
    """Return (inputs for `rows` that can be built, {row: reason} for the others), in `rows` order."""
    values = {
        m: table.column(f"{prefix}_{m}").to_pylist()
        for m in c.MODALITIES
        if f"{prefix}_{m}" in table.column_names
    }
    payloads = {
        m: table.column(c.media_payload_column(f"{prefix}_{m}")).to_pylist()
        for m in c.MEDIA_MODALITIES
        if c.media_payload_column(f"{prefix}_{m}") in table.column_names
    }
    inputs: list = []
    errors: dict[int, str] = {}
    for i in rows:
        element, reason = _element(i, prefix, values, payloads)
        if reason is None and model is not None:
            reason = _unsupported(model, element)
        if reason is None:
            inputs.append(element)
        else:
            errors[i] = reason
    return inputs, errors


def _element(i: int, prefix: str, values: dict[str, list], payloads: dict[str, list]):
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
        from actors.media_codec import payload_to_input

        element[modality] = payload_to_input(modality, payload[i])
    if not element:
        return None, f"{prefix} has no content ({prefix}_text/_image/_audio/_video are all null)"
    return (element["text"] if list(element) == ["text"] else element), None


def _unsupported(model, element) -> str | None:
    modalities = ("text",) if isinstance(element, str) else tuple(sorted(element))
    key = modalities[0] if len(modalities) == 1 else modalities
    if model.supports(key):
        return None
    return f"unsupported modality: input has {list(modalities)}, model supports {list(model.modalities)}"
