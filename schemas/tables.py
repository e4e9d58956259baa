"""Arrow schemas of the tables the jobs read and write, and validation of inputs before any cluster work."""

from __future__ import annotations

import pyarrow as pa

from schemas import columns as c

PAIRS_SCHEMA = pa.schema(
    [
        # Ids are required; a null one is reported as an error row by the validate stage, not a crash.
        pa.field(c.QUERY_ID, pa.string()),
        pa.field(c.CANDIDATE_ID, pa.string()),
        *[pa.field(name, pa.string()) for name in c.QUERY_CONTENT + c.CANDIDATE_CONTENT],
        pa.field(c.RETRIEVAL_SCORE, pa.float32()),
        pa.field(c.RETRIEVAL_RANK, pa.int32()),
        pa.field(c.INSTRUCTION, pa.string()),
    ]
)

RANKED_SCHEMA = pa.schema(
    [
        pa.field(c.QUERY_ID, pa.string(), nullable=False),
        pa.field(c.CANDIDATE_ID, pa.string(), nullable=False),
        pa.field(c.SCORE, pa.float32(), nullable=False),
        pa.field(c.RANK, pa.int32(), nullable=False),
    ]
)

# Beside `score` when the run fuses reranker and retrieval scores (`--fuse`); `rank` then orders by it.
FUSED_SCORE_FIELD = pa.field(c.FUSED_SCORE, pa.float32(), nullable=False)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field(c.QUERY_ID, pa.string()),
        pa.field(c.CANDIDATE_ID, pa.string()),
        pa.field(c.STAGE, pa.string(), nullable=False),
        pa.field(c.ERROR, pa.string(), nullable=False),
    ]
)

CORPUS_SCHEMA = pa.schema(
    [pa.field(c.DOC_ID, pa.string(), nullable=False), *[pa.field(n, pa.string()) for n in c.DOC_CONTENT]]
)
QUERIES_SCHEMA = pa.schema(
    [pa.field(c.QUERY_ID, pa.string(), nullable=False), *[pa.field(n, pa.string()) for n in c.QUERY_CONTENT]]
)


class InputError(ValueError):
    """Bad user input, reported as one line naming the column or path and the fix."""


class TooManyErrors(Exception):
    """A run that completed (its output and manifest are written) with more failed rows than allowed:
    jobs exit 3. `summary` is what the job prints on stdout as for a good run."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


class JobFailed(RuntimeError):
    """A run that cannot complete for a reason the user can act on (e.g. a block that keeps killing its
    actor): jobs print the one-line message and exit 1."""


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def check_schema(
    schema: pa.Schema,
    *,
    required: list[str],
    content_groups: dict[str, list[str]],
    numeric: dict[str, str] | None = None,
    where: str,
) -> None:
    """Fail in one line when `schema` (read from `where`) lacks a required column or has a wrong type.

    `content_groups` maps a side ("query") to its content columns; at least one of each group must exist.
    Id columns may be integers (they are cast to string); content columns must be strings.
    """
    names = set(schema.names)
    for col in required:
        if col not in names:
            raise InputError(f"{where}: missing required column {col!r} (columns present: {sorted(names)})")
        t = schema.field(col).type
        if not (_is_string(t) or pa.types.is_integer(t)):
            raise InputError(f"{where}: column {col!r} has type {t}, expected string")
    for side, cols in content_groups.items():
        present = [col for col in cols if col in names]
        if not present:
            raise InputError(f"{where}: no {side} content column; expected at least one of {cols}")
        for col in present:
            t = schema.field(col).type
            if not _is_string(t):
                raise InputError(
                    f"{where}: column {col!r} has type {t}, expected string (text or a media URI)"
                )
    for col, kind in (numeric or {}).items():
        if col in names:
            t = schema.field(col).type
            ok = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)
            if not ok:
                raise InputError(f"{where}: column {col!r} has type {t}, expected {kind}")


def check_pairs_schema(schema: pa.Schema, where: str) -> None:
    check_schema(
        schema,
        required=[c.QUERY_ID, c.CANDIDATE_ID],
        content_groups={"query": c.QUERY_CONTENT, "candidate": c.CANDIDATE_CONTENT},
        numeric={c.RETRIEVAL_SCORE: "float", c.RETRIEVAL_RANK: "int"},
        where=where,
    )
    if c.INSTRUCTION in schema.names and not _is_string(schema.field(c.INSTRUCTION).type):
        t = schema.field(c.INSTRUCTION).type
        raise InputError(
            f"{where}: column {c.INSTRUCTION!r} has type {t}, expected string (the pair's prompt, or null)"
        )


def check_corpus_schema(schema: pa.Schema, where: str) -> None:
    check_schema(schema, required=[c.DOC_ID], content_groups={"doc": c.DOC_CONTENT}, where=where)


def check_queries_schema(schema: pa.Schema, where: str) -> None:
    check_schema(schema, required=[c.QUERY_ID], content_groups={"query": c.QUERY_CONTENT}, where=where)


def normalize_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Project `table` onto `schema`: columns cast, absent ones as nulls, unknown extra columns dropped."""
    n = table.num_rows
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def normalize_pairs(table: pa.Table) -> pa.Table:
    """Project a pairs batch onto PAIRS_SCHEMA: ids cast to string, absent optional columns as nulls,
    unknown extra columns dropped (they are ignored, never an error)."""
    n = table.num_rows
    arrays = []
    for field in PAIRS_SCHEMA:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=PAIRS_SCHEMA)
