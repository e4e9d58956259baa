"""Payloads: the decoded form of a media reference, as it travels from the media stage to the scoring actors.

A payload is the bytes of one NumPy `.npy` file (`np.save`, no pickle): self-describing (dtype and shape in
its header), readable without this code, and decoded without copying through Python objects. One layout
per modality, fixed, because transformers infers a batch's layout from its first item:

| modality | array                        | handed to the model as                    |
|----------|------------------------------|-------------------------------------------|
| image    | uint8 (H, W, 3), RGB         | `PIL.Image` (mode RGB)                    |
| audio    | float32 (N,), mono, 16 kHz   | the 1-D array                             |
| video    | uint8 (T, 3, H, W), RGB      | the 4-D array (TCHW, torchcodec's layout) |

In a table, a payload column is `dictionary<int32, large_binary>`: a reference used by many pairs of a block
is stored, and later decoded, once.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

AUDIO_SAMPLE_RATE = 16000
PAYLOAD_TYPE = pa.dictionary(pa.int32(), pa.large_binary())

_LAYOUTS = {
    # modality: (dtype, ndim, channel axis or None, layout name for messages)
    "image": (np.uint8, 3, 2, "uint8 (H, W, 3)"),
    "audio": (np.float32, 1, None, "float32 (N,)"),
    "video": (np.uint8, 4, 1, "uint8 (T, 3, H, W)"),
}


def check_layout(modality: str, array: np.ndarray) -> None:
    """Raise ValueError unless `array` has the one layout payloads of `modality` use."""
    if modality not in _LAYOUTS:
        raise ValueError(f"unknown media modality {modality!r}; expected one of {sorted(_LAYOUTS)}")
    dtype, ndim, channel_axis, name = _LAYOUTS[modality]
    ok = array.dtype == dtype and array.ndim == ndim
    if ok and channel_axis is not None:
        ok = array.shape[channel_axis] == 3
    if not ok:
        raise ValueError(f"{modality} payload must be {name}, got {array.dtype} {tuple(array.shape)}")


def encode_payload(modality: str, array: np.ndarray) -> bytes:
    """The payload bytes of a decoded media item (see the module docstring for the layouts)."""
    check_layout(modality, array)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_payload(modality: str, payload: bytes) -> np.ndarray:
    """The array stored in a payload, checked against the modality's layout."""
    array = np.load(io.BytesIO(payload), allow_pickle=False)
    check_layout(modality, array)
    return array


def payload_to_input(modality: str, payload: bytes):
    """The in-memory object sentence-transformers takes for this modality: PIL image, 1-D audio array at
    16 kHz, or a TCHW uint8 video array (never a path: the model must not fetch anything itself)."""
    array = decode_payload(modality, payload)
    if modality == "image":
        from PIL import Image

        return Image.fromarray(array)  # uint8 (H, W, 3) is RGB
    return array


def payload_inputs(modality: str, column: pa.ChunkedArray | pa.Array) -> list:
    """`payload_to_input` for every row of a payload column (None for null rows), decoding each distinct
    payload of a dictionary column once: the many pairs that share a reference share one object."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            decoded: dict[int, object] = {}
            dictionary = chunk.dictionary
            for index in chunk.indices.to_pylist():
                if index is None:
                    out.append(None)
                    continue
                if index not in decoded:
                    decoded[index] = payload_to_input(modality, dictionary[index].as_py())
                out.append(decoded[index])
        else:
            out.extend(None if p is None else payload_to_input(modality, p) for p in chunk.to_pylist())
    return out


def payload_array(payloads: list[bytes | None]) -> pa.DictionaryArray:
    """A payload column from per-row payloads; rows holding the same bytes object share one entry."""
    slots: dict[int, int] = {}
    values: list[bytes] = []
    indices: list[int | None] = []
    for payload in payloads:
        if payload is None:
            indices.append(None)
            continue
        slot = slots.get(id(payload))
        if slot is None:
            slot = slots[id(payload)] = len(values)
            values.append(payload)
        indices.append(slot)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values, pa.large_binary()))
