"""Turn a block of pair rows into the inputs `CrossEncoder.preprocess` takes.

A side with only text is a string; a side with media is a dict `{"text": ..., "image": ...}` exactly as
sentence-transformers takes it, where each media value is the in-memory object the media stage decoded
(never the reference string: a missing file must not be scored as if its path were text).
"""

from __future__ import annotations

import pyarrow as pa

from schemas import columns as c


def _side_values(table: pa.Table, side: str) -> dict[str, list]:
    values = {}
    for modality in c.MODALITIES:
        name = f"{side}_{modality}"
        if name in table.column_names:
            values[modality] = table.column(name).to_pylist()
    return values


def build_pairs(table: pa.Table, rows: list[int], model=None) -> tuple[list, dict[int, str]]:
    """Return (pairs for `rows`, {row: reason} for rows that cannot be built).

    Media payloads are read from the internal columns the media stage fills; a media reference with no
    payload means that stage did not run, which is an error, not a reason to score the reference string.
    """
    from actors.media_codec import payload_to_input

    sides = {side: _side_values(table, side) for side in ("query", "candidate")}
    payloads = {
        col: table.column(c.media_payload_column(col)).to_pylist()
        for side in ("query", "candidate")
        for col in (f"{side}_{m}" for m in c.MEDIA_MODALITIES)
        if c.media_payload_column(col) in table.column_names
    }
    pairs: list = []
    errors: dict[int, str] = {}
    for i in rows:
        pair = []
        for side, values in sides.items():
            element: dict = {}
            for modality, column in values.items():
                ref = column[i]
                if ref is None:
                    continue
                if modality == "text":
                    element["text"] = ref
                    continue
                payload = payloads.get(f"{side}_{modality}")
                if payload is None or payload[i] is None:
                    errors[i] = f"{side}_{modality} {ref!r} was not fetched by the media stage"
                    break
                element[modality] = payload_to_input(modality, payload[i])
            if i in errors:
                break
            if not element:
                errors[i] = f"{side} has no content (all of {side}_text/_image/_audio/_video are null)"
                break
            pair.append(element["text"] if list(element) == ["text"] else element)
        if i not in errors:
            if model is not None and not _supported(model, pair):
                errors[i] = _unsupported_reason(model, pair)
            else:
                pairs.append(pair)
    return pairs, errors


def _modalities_of(element) -> tuple[str, ...]:
    return ("text",) if isinstance(element, str) else tuple(sorted(element))


def _supported(model, pair: list) -> bool:
    for element in pair:
        mods = _modalities_of(element)
        key = mods[0] if len(mods) == 1 else mods
        if not model.supports(key):
            return False
    return True


def _unsupported_reason(model, pair: list) -> str:
    wanted = sorted({m for element in pair for m in _modalities_of(element)})
    return f"unsupported modality: pair has {wanted}, model supports {list(model.modalities)}"
