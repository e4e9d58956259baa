"""Stage: project pair rows onto the contract and mark rows that cannot be scored as error rows.

Input columns outside the contract are dropped here, except those the caller keeps (`--keep-columns`):
they travel unchanged through media, scoring and ranking into `ranked/`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from schemas import columns as c
from schemas.settings import SettingError
from schemas.stages import Stage
from schemas.tables import PAIRS_SCHEMA, InputError, normalize_pairs

# Projecting onto PAIRS_SCHEMA adds every column of the contract (absent ones as nulls).
VALIDATE = Stage(
    "validate",
    needs=(c.QUERY_ID, c.CANDIDATE_ID),
    adds=(*PAIRS_SCHEMA.names, c.ROW_ERROR, c.ROW_STAGE),
)


def _has_content(table: pa.Table, cols: list[str]) -> pa.Array:
    present = [pc.is_valid(table.column(col)) for col in cols]
    out = present[0]
    for p in present[1:]:
        out = pc.or_(out, p)
    return out


# Columns the ranked output writes itself: an input column of that name cannot be carried over it.
OUTPUT_COLUMNS = (c.SCORE, c.RANK)
ALL_COLUMNS = "*"


def check_keep_columns(keep: Sequence[str]) -> None:
    """The names `--keep-columns` may hold: `*` alone, or input columns other than the ones the output
    writes itself and internal (`__`) ones."""
    if ALL_COLUMNS in keep and len(keep) > 1:
        raise SettingError("keep_columns", f"{','.join(keep)!r}: '*' keeps every column; give it alone")
    for name in keep:
        if name.startswith(c.INTERNAL):
            raise SettingError("keep_columns", f"{name!r}: names starting with {c.INTERNAL!r} are internal")
        if name in OUTPUT_COLUMNS:
            raise SettingError("keep_columns", f"{name!r}: the ranked output writes its own {name!r}")


def resolve_keep(keep: Sequence[str], schemas: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The kept columns, `*` expanded from the first input's columns; each must be a column of every
    input (`schemas`: {where: column names}), else one line naming the input and the column."""
    if not keep or not schemas:
        return tuple(keep)
    if tuple(keep) == (ALL_COLUMNS,):
        first = next(iter(schemas.values()))
        keep = [n for n in first if not n.startswith(c.INTERNAL) and n not in OUTPUT_COLUMNS]
    for where, names in schemas.items():
        for name in keep:
            if name not in names:
                raise InputError(
                    f"{where}: --keep-columns {name!r}: no such input column (columns present: {list(names)})"
                )
    return tuple(keep)


def validate_pairs(table: pa.Table, keep: Sequence[str] = ()) -> pa.Table:
    """Rows with a null id or a side without any content get `__error`/`__stage`; nothing is dropped.
    `keep`: input columns outside the contract to carry along unchanged (contract columns always are)."""
    missing = [name for name in keep if name not in table.column_names]
    if missing:
        raise InputError(
            f"--keep-columns {missing[0]!r}: the pairs have no such column ({table.column_names})"
        )
    key = table.column(c.ROW_KEY) if c.ROW_KEY in table.column_names else None
    extra = [(name, table.column(name)) for name in keep if name not in PAIRS_SCHEMA.names]
    table = normalize_pairs(table)
    for name, column in extra:
        table = table.append_column(name, column)
    if key is not None:  # the checkpoint's row key rides along (pipelines.rerank.read)
        table = table.append_column(c.ROW_KEY, key)
    reasons: list[str | None] = [None] * table.num_rows
    checks = [
        (pc.is_null(table.column(c.QUERY_ID)), "query_id is null"),
        (pc.is_null(table.column(c.CANDIDATE_ID)), "candidate_id is null"),
        (
            pc.invert(_has_content(table, c.QUERY_CONTENT)),
            "query has no content: query_text/_image/_audio/_video all null",
        ),
        (
            pc.invert(_has_content(table, c.CANDIDATE_CONTENT)),
            "candidate has no content: candidate_text/_image/_audio/_video all null",
        ),
    ]
    for mask, reason in checks:
        for i, bad in enumerate(mask.to_pylist()):
            if bad and reasons[i] is None:
                reasons[i] = reason
    stages = [VALIDATE.name if r is not None else None for r in reasons]
    return table.append_column(c.ROW_ERROR, pa.array(reasons, pa.string())).append_column(
        c.ROW_STAGE, pa.array(stages, pa.string())
    )
