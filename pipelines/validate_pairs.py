"""Stage: project pair rows onto the contract and mark rows that cannot be scored as error rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.stages import Stage
from schemas import columns as c
from schemas.tables import PAIRS_SCHEMA, normalize_pairs

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


def validate_pairs(table: pa.Table) -> pa.Table:
    """Rows with a null id or a side without any content get `__error`/`__stage`; nothing is dropped."""
    table = normalize_pairs(table)
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
