"""The runs an evaluation reads, resolved on the driver: `NAME=DIR[:ranked|:candidates]` or `NAME=FILE`
specs, the Parquet files (or the TREC run file) behind each, and which score column orders it (see
`pipelines.evaluate.pipeline` for the layout).

A TREC run file (``qid Q0 docid rank score tag`` per line, any whitespace between fields: what trec_eval
reads) is recognised by its extension (.trec, .txt, .run) or, for a file that is not Parquet, by its first
line. Its lines are parsed where they are read (`parse_trec_lines`: on the driver or on Ray workers), into
the columns a Parquet run has; like trec_eval, the evaluation orders it by score and ignores the rank and
Q0 fields and the tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.columns import CANDIDATE_ID, FUSED_SCORE, QUERY_ID, RETRIEVAL_SCORE, SCORE
from schemas.qrels import resolve_filesystem
from schemas.tables import InputError

RunKind = Literal["ranked", "candidates", "trec"]
RUN_KINDS: tuple[RunKind, ...] = ("ranked", "candidates")  # the folders a run root may hold
SCORE_COLUMNS: dict[RunKind, str] = {"ranked": SCORE, "candidates": RETRIEVAL_SCORE, "trec": SCORE}
TREC_EXTENSIONS = (".trec", ".txt", ".run")
TREC_FIELDS = "qid Q0 docid rank score tag"
MIN_TREC_LINE_BYTES = 12  # "q Q0 d 1 1 t\n": an upper bound on a TREC file's lines from its size
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class RunInputError(InputError):
    """A run that cannot be evaluated; the message is one line naming the run, path or column."""


@dataclass(frozen=True)
class RunSource:
    """One run resolved on the driver: where its Parquet files (kind "trec": its one TREC run file) are
    and which score orders it."""

    name: str
    location: str
    kind: RunKind
    filesystem: pafs.FileSystem
    files: tuple[str, ...]
    num_bytes: int
    fused: bool = False  # ranked output with `fused_score` (`--fuse`): its rank follows that column

    @property
    def score_column(self) -> str:
        return FUSED_SCORE if self.fused else SCORE_COLUMNS[self.kind]


def parse_run_spec(spec: str) -> tuple[str, str]:
    """Split a CLI ``NAME=DIR[:ranked|:candidates]`` or ``NAME=FILE`` into (name, location)."""
    name, sep, location = spec.partition("=")
    if not sep or not name or not location:
        raise RunInputError(
            f"--run {spec!r}: expected NAME=DIR or NAME=FILE, e.g. reranked=out/run1, "
            "retrieval=out/run1:candidates or bm25=bm25.trec"
        )
    return name, location


def resolve_run(name: str, location: str) -> RunSource:
    """Find the Parquet files (or the TREC run file) of run `name` at `location` and check their schema
    (driver only)."""
    if not _NAME.match(name):
        raise RunInputError(f"run name {name!r}: use letters, digits, '_', '-' or '.' (it names <name>.trec)")
    base, kind = _split_kind(location)
    fs, root = resolve_filesystem(base, f"run {name!r}")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise RunInputError(f"run {name!r}: {base} does not exist")
    if info.type == pafs.FileType.File and _is_trec_file(name, fs, root):
        if kind:
            raise RunInputError(f"run {name!r}: {base} is a TREC run file; drop the :{kind} suffix")
        return RunSource(name, location, "trec", fs, (root,), info.size or 0)
    folder = root
    if info.type == pafs.FileType.Directory:
        for sub in [kind] if kind else RUN_KINDS:
            if fs.get_file_info(f"{root}/{sub}").type == pafs.FileType.Directory:
                folder, kind = f"{root}/{sub}", sub
                break
    infos = _parquet_files(fs, folder) if info.type == pafs.FileType.Directory else [info]
    files = [i.path for i in infos]
    if not files:
        raise RunInputError(f"run {name!r}: no *.parquet files under {base} (nor in ranked/ or candidates/)")
    try:
        schema = pq.read_schema(files[0], filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunInputError(f"run {name!r}: {files[0]} is not readable Parquet ({exc})") from None
    kind = kind or _infer_kind(name, files[0], schema)
    fused = kind == "ranked" and FUSED_SCORE in schema.names
    _check_run_schema(name, files[0], schema, FUSED_SCORE if fused else SCORE_COLUMNS[kind])
    return RunSource(
        name=name,
        location=location,
        kind=kind,
        filesystem=fs,
        files=tuple(files),
        num_bytes=sum(i.size or 0 for i in infos),
        fused=fused,
    )


def _split_kind(location: str) -> tuple[str, RunKind | None]:
    for kind in RUN_KINDS:
        if location.endswith(f":{kind}"):
            return location[: -len(kind) - 1], kind
    return location, None


def _parquet_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    hidden = re.compile(r"(^|/)[._]")
    return sorted(
        (
            i
            for i in infos
            if i.type == pafs.FileType.File
            and i.path.endswith(".parquet")
            and not hidden.search(i.path[len(folder) :])
        ),
        key=lambda i: i.path,
    )


def _infer_kind(name: str, file: str, schema: pa.Schema) -> RunKind:
    if SCORE in schema.names:
        return "ranked"
    if RETRIEVAL_SCORE in schema.names:
        return "candidates"
    raise RunInputError(
        f"run {name!r}: {file} has neither {SCORE!r} (ranked output) nor {RETRIEVAL_SCORE!r} "
        f"(candidates); columns present: {schema.names}"
    )


def _check_run_schema(name: str, file: str, schema: pa.Schema, score_column: str) -> None:
    for col in (QUERY_ID, CANDIDATE_ID, score_column):
        if col not in schema.names:
            raise RunInputError(
                f"run {name!r}: {file} lacks column {col!r} (columns present: {schema.names})"
            )
    for col in (QUERY_ID, CANDIDATE_ID):
        t = schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
            raise RunInputError(f"run {name!r}: {file} column {col!r} has type {t}, expected string")
    t = schema.field(score_column).type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise RunInputError(f"run {name!r}: {file} column {score_column!r} has type {t}, expected float")


def _is_trec_file(name: str, fs: pafs.FileSystem, path: str) -> bool:
    """A TREC run file by its extension, or a file that is not Parquet whose first line has TREC's six
    fields. A .trec/.txt/.run file whose first line is not a TREC line fails here, in a second."""
    with fs.open_input_stream(path) as stream:
        head = stream.read(65536)
    if head[:4] == b"PAR1" or path.endswith(".parquet"):
        return False
    first = next((line for line in head.decode("utf-8", "replace").splitlines() if line.strip()), "")
    looks = len(first.split()) == 6
    if path.endswith(TREC_EXTENSIONS) or looks:
        parse_trec_lines(pa.array([first], pa.string()), name)  # fails in one line when it is not one
        return True
    raise RunInputError(
        f"run {name!r}: {path} is neither Parquet nor a TREC run file (lines '{TREC_FIELDS}'); its first "
        f"line is {first[:80]!r}"
    )


def parse_trec_lines(lines: pa.Array | pa.ChunkedArray, name: str) -> pa.Table:
    """TREC run lines (blank ones skipped) as `query_id`, `candidate_id`, `score` (float64, parsed as
    trec_eval's atof reads it: the nearest double). A line without six fields, or with a score that is no
    number, is a RunInputError quoting it."""
    trimmed = pc.utf8_trim_whitespace(lines)
    fields = pc.utf8_split_whitespace(trimmed.filter(pc.greater(pc.fill_null(pc.utf8_length(trimmed), 0), 0)))
    counts = pc.list_value_length(fields)
    bad = pc.not_equal(counts, 6)
    if pc.any(bad).as_py():
        line = " ".join(fields.filter(bad)[0].as_py())
        raise RunInputError(f"run {name!r}: line {line[:120]!r} is not '{TREC_FIELDS}' (6 fields)")
    scores = pc.list_element(fields, 4)
    try:
        parsed = pc.cast(scores, pa.float64())
    except pa.ArrowInvalid:
        line = next(
            " ".join(f) for f, s in zip(fields.to_pylist(), scores.to_pylist(), strict=True) if not _number(s)
        )
        raise RunInputError(f"run {name!r}: line {line[:120]!r} has a score that is not a number") from None
    return pa.table(
        {QUERY_ID: pc.list_element(fields, 0), CANDIDATE_ID: pc.list_element(fields, 2), SCORE: parsed}
    )


def trec_lines_batch(batch: pa.Table, *, name: str) -> pa.Table:
    """`ray.data.read_text` rows (a `text` column) as `parse_trec_lines` columns, on a worker."""
    return parse_trec_lines(batch.column("text"), name)


def read_trec_file(source: RunSource) -> pa.Table:
    """The whole TREC run file of `source` as `parse_trec_lines` columns (the driver path, few rows)."""
    with source.filesystem.open_input_stream(source.files[0]) as stream:
        text = stream.read().decode("utf-8")
    return parse_trec_lines(pa.array(text.splitlines(), pa.string()), source.name)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
