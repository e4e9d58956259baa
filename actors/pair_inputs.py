"""Turn a block of pair rows into the inputs `CrossEncoder.preprocess` takes.

A side with one modality is that value (a string, a PIL image, an audio or video array); a side with
several is a dict `{"text": ..., "image": ...}`, exactly as sentence-transformers takes them. Each media
value is the in-memory object the media stage decoded (never the reference string: a missing file must not
be scored as if its path were text).
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
    from actors.media_codec import payload_inputs

    sides = {side: _side_values(table, side) for side in ("query", "candidate")}
    # Decoded once per distinct payload: every pair sharing a reference gets the same in-memory object.
    payloads = {
        col: payload_inputs(col.rsplit("_", 1)[1], table.column(c.media_payload_column(col)))
        for side in ("query", "candidate")
        for col in (f"{side}_{m}" for m in c.MEDIA_MODALITIES)
        if c.media_payload_column(col) in table.column_names
    }
    pairs: list = []
    errors: dict[int, str] = {}
    for i in rows:
        pair, kinds = [], []
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
                element[modality] = payload[i]
            if i in errors:
                break
            if not element:
                errors[i] = f"{side} has no content (all of {side}_text/_image/_audio/_video are null)"
                break
            # One modality is the bare object (a string, PIL image, array); several make a dict.
            pair.append(next(iter(element.values())) if len(element) == 1 else element)
            kinds.append(tuple(sorted(element)))
        if i not in errors:
            if model is not None and not _supported(model, kinds):
                errors[i] = _unsupported_reason(model, kinds, sides, i)
            else:
                pairs.append(pair)
    return pairs, errors


def _supported(model, kinds: list[tuple[str, ...]]) -> bool:
    return all(model.supports(mods[0] if len(mods) == 1 else mods) for mods in kinds)


def _unsupported_reason(
    model, kinds: list[tuple[str, ...]], sides: dict[str, dict[str, list]], row: int
) -> str:
    """E.g. "unsupported modality: candidate_audio 'a.wav' is audio; the model takes text, image, video"."""
    takes = [m for m in model.modalities if m != "message"]
    for (side, values), mods in zip(sides.items(), kinds, strict=True):
        if model.supports(mods[0] if len(mods) == 1 else mods):
            continue
        missing = [m for m in mods if not model.supports(m)]
        if missing:
            refs = ", ".join(f"{side}_{m} {values[m][row]!r}" for m in missing)
            return f"unsupported modality: {refs} is {'/'.join(missing)}; the model takes {', '.join(takes)}"
        combined = "+".join(mods)
        return f"unsupported modality: {side} combines {combined}; the model takes them only one at a time"
    return f"unsupported modality; the model takes {', '.join(takes)}"
