"""Stage: project pair rows onto the contract and mark rows that cannot be scored as error rows.

Input columns outside the contract are dropped here, except those the caller keeps (`--keep-columns`):
they travel unchanged through media, scoring and ranking into `ranked/`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.storage import uris
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
OUTPUT_COLUMNS = (c.SCORE, c.FUSED_SCORE, c.RANK)
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
    joined = table.column(c.ROW_INPUT_ERROR).to_pylist() if c.ROW_INPUT_ERROR in table.column_names else None
    extra = [(name, table.column(name)) for name in keep if name not in PAIRS_SCHEMA.names]
    table = normalize_pairs(table)
    for name, column in extra:
        table = table.append_column(name, column)
    if key is not None:  # the checkpoint's row key rides along (pipelines.rerank.read)
        table = table.append_column(c.ROW_KEY, key)
    # A first-stage row whose document or query is missing (pipelines.inputs.first_stage) fails as such.
    reasons: list[str | None] = list(joined) if joined is not None else [None] * table.num_rows
    stages = ["join" if r is not None else None for r in reasons]
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
    stages = [s or (VALIDATE.name if r is not None else None) for s, r in zip(stages, reasons, strict=True)]
    return table.append_column(c.ROW_ERROR, pa.array(reasons, pa.string())).append_column(
        c.ROW_STAGE, pa.array(stages, pa.string())
    )


def instruction_digest(source) -> str | None:
    """sha256 over every pair's instruction in `source` (a `pipelines.inputs.sources.Source`: its files,
    format and the input's name for the column), in input order, nulls told apart from empty strings:
    part of a run's identity, so that a changed instruction is named as such. None when no input file has
    the column. Only that column is read (for JSON Lines, each file is parsed whole)."""
    if source is None:
        return None
    column = source.input_name(c.INSTRUCTION)
    digest, found = hashlib.sha256(), False
    for uri in source.files:
        values = _instruction_values(uri, source.format, column)
        digest.update(f"\0file {len(values) if values is not None else -1}\0".encode())
        if values is None:
            continue
        found = True
        for batch in values:
            for value in batch.to_pylist():
                digest.update(b"\1" if value is None else b"\2" + value.encode() + b"\3")
    return "sha256:" + digest.hexdigest() if found else None


def _instruction_values(uri: str, fmt: str, column: str) -> list[pa.Array] | None:
    fs, path = uris.filesystem(uri)
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            pf = pq.ParquetFile(f)
            if column not in pf.schema_arrow.names:
                return None
            return [b.column(0) for b in pf.iter_batches(columns=[column])]
        if fmt == "csv":
            options = pacsv.ConvertOptions(column_types={column: pa.string()}, strings_can_be_null=True)
            table = pacsv.read_csv(f, convert_options=options)
        else:
            table = pajson.read_json(f)
    if column not in table.column_names:
        return None
    return [chunk.cast(pa.string()) for chunk in table.column(column).chunks]
