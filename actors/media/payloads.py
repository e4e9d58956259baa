"""The decoded payloads of one output block of the media stage, held under a byte budget.

Each payload column (`__candidate_image`, ...) of the block being built writes its payloads (the `.npy`
bytes of `actors.media.codec`) straight into one Arrow buffer as they are decoded; the column's dictionary
values are then a view of that buffer, so emitting the block copies nothing. A buffer is reserved at the
budget's size but only the bytes written are touched; `used` counts them across all columns, and the
stage starts a new block when the next item would take it over the budget.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Iterable

import numpy as np
import pyarrow as pa

from actors.media.codec import PAYLOAD_TYPE


def npy_header(array: np.ndarray) -> bytes:
    """The header `np.save` writes before `array`'s bytes (format 1.0, or 2.0 for a huge header)."""
    out = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # a header over 64 kB (a shape with very many dimensions)
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


class _ColumnBuffer:
    """The payloads of one column: one Arrow buffer, written front to back, and the offsets of its entries."""

    def __init__(self, capacity: int):
        self.buffer = pa.allocate_buffer(capacity)
        self.writer = pa.FixedSizeBufferWriter(self.buffer)
        self.offsets = [0]
        self.slots: dict[Hashable, int] = {}

    def write(self, key: Hashable, *parts) -> None:
        for part in parts:
            self.writer.write(part)
        self.slots[key] = len(self.offsets) - 1
        self.offsets.append(self.writer.tell())

    def entry(self, key: Hashable) -> pa.Buffer:
        slot = self.slots[key]
        return self.buffer.slice(self.offsets[slot], self.offsets[slot + 1] - self.offsets[slot])

    def values(self) -> pa.Array:
        offsets = pa.py_buffer(np.asarray(self.offsets, dtype=np.int64))
        data = self.buffer.slice(0, self.offsets[-1])
        return pa.Array.from_buffers(pa.large_binary(), len(self.offsets) - 1, [None, offsets, data])


class BlockPayloads:
    """The payloads of the block being built, per column, keyed by reference, with `used` bytes in all."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.columns: dict[str, _ColumnBuffer] = {}
        self.used = 0

    def holds(self, column: str, key: Hashable) -> bool:
        buffer = self.columns.get(column)
        return buffer is not None and key in buffer.slots

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.capacity

    def add(self, column: str, key: Hashable, array: np.ndarray, header: bytes) -> None:
        """Write `array` (C-contiguous) as the payload of `key` in `column`; the caller checked `fits`."""
        buffer = self.columns.get(column) or self.columns.setdefault(column, _ColumnBuffer(self.capacity))
        buffer.write(key, header, array.reshape(-1).view(np.uint8))
        self.used += len(header) + array.nbytes

    def carry(self, keep: Iterable[tuple[str, Hashable]], extra: int, budget: int) -> BlockPayloads:
        """A new block holding the payloads in `keep` (those later rows still need), with room for `extra`
        more bytes: the budget, or more when what must be held at once does not fit in it."""
        keep = [(column, key) for column, key in keep if self.holds(column, key)]
        sizes = [self.columns[column].entry(key).size for column, key in keep]
        block = BlockPayloads(max(budget, sum(sizes) + extra))
        for column, key in keep:
            entry = self.columns[column].entry(key)
            target = block.columns.get(column) or block.columns.setdefault(
                column, _ColumnBuffer(block.capacity)
            )
            target.write(key, entry)
            block.used += entry.size
        return block

    def column(self, column: str, keys: list[Hashable | None]) -> pa.DictionaryArray:
        """The payload column for rows whose payload keys are `keys` (None: no payload)."""
        buffer = self.columns.get(column)
        if buffer is None:
            indices = pa.nulls(len(keys), pa.int32())
            return pa.DictionaryArray.from_arrays(indices, pa.array([], pa.large_binary()))
        slots = [None if key is None else buffer.slots[key] for key in keys]
        array = pa.DictionaryArray.from_arrays(pa.array(slots, pa.int32()), buffer.values())
        return array if array.type == PAYLOAD_TYPE else array.cast(PAYLOAD_TYPE)
