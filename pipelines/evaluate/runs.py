"""The runs an evaluation reads, resolved on the driver: `NAME=DIR[:ranked|:candidates]` specs, the
Parquet files behind each, and which score column orders it (see `pipelines.evaluate.pipeline` for the layout)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.columns import CANDIDATE_ID, QUERY_ID, RETRIEVAL_SCORE, SCORE
from schemas.qrels import resolve_filesystem
from schemas.tables import InputError

RunKind = Literal["ranked", "candidates"]
RUN_KINDS: tuple[RunKind, ...] = ("ranked", "candidates")
SCORE_COLUMNS: dict[RunKind, str] = {"ranked": SCORE, "candidates": RETRIEVAL_SCORE}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class RunInputError(InputError):
    """A run that cannot be evaluated; the message is one line naming the run, path or column."""


@dataclass(frozen=True)
class RunSource:
    """One run resolved on the driver: where its Parquet files are and which score orders it."""

    name: str
    location: str
    kind: RunKind
    filesystem: pafs.FileSystem
    files: tuple[str, ...]
    num_bytes: int

    @property
    def score_column(self) -> str:
        return SCORE_COLUMNS[self.kind]


def parse_run_spec(spec: str) -> tuple[str, str]:
    """Split a CLI ``NAME=DIR[:ranked|:candidates]`` into (name, location)."""
    name, sep, location = spec.partition("=")
    if not sep or not name or not location:
        raise RunInputError(
            f"--run {spec!r}: expected NAME=DIR, e.g. reranked=out/run1 or bm25=out/run1:candidates"
        )
    return name, location


def resolve_run(name: str, location: str) -> RunSource:
    """Find the Parquet files of run `name` at `location` and check their schema (driver only)."""
    if not _NAME.match(name):
        raise RunInputError(f"run name {name!r}: use letters, digits, '_', '-' or '.' (it names <name>.trec)")
    base, kind = _split_kind(location)
    fs, root = resolve_filesystem(base, f"run {name!r}")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise RunInputError(f"run {name!r}: {base} does not exist")
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
    _check_run_schema(name, files[0], schema, SCORE_COLUMNS[kind])
    return RunSource(
        name=name,
        location=location,
        kind=kind,
        filesystem=fs,
        files=tuple(files),
        num_bytes=sum(i.size or 0 for i in infos),
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
