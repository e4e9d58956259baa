"""Input tables (pairs, corpus, queries) from Parquet, JSON Lines or CSV, renamed onto the contract.

`open_source` resolves an input on the driver: its files (a file, a directory of shards or a glob), their
format (`--format`, else the files' extension) and the `--column COLUMN=INPUT` renames that concern this
table. `Source.schemas()` gives each file's schema as the job will see it (Parquet: the footer; JSONL and
CSV: the first block, parsed as the workers will parse it), so the contract checks run before any cluster
work, whatever the format. `Source.read()` hands the files to Ray Data's own readers and renames columns.

Ids and text stay strings. CSV columns that land on a contract string column are read as strings (`007`
stays `007`, `NA` stays `NA`; only an empty unquoted field is null). JSONL is read by Arrow's JSON reader
(Ray's `read_json` without `lines=True`, which parses JSON Lines), not by pandas, whose type inference
turns the id "007" into 7; a contract column Arrow would infer as a timestamp is read as the string it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.storage import uris
from schemas.settings import SettingError
from schemas.tables import InputError, normalize_to

FileFormat = Literal["auto", "parquet", "jsonl", "csv"]
FORMATS: tuple[str, ...] = get_args(FileFormat)
EXTENSIONS = {"parquet": (".parquet",), "jsonl": (".jsonl", ".json"), "csv": (".csv",)}
KIND = {"parquet": "Parquet", "jsonl": "JSON Lines", "csv": "CSV"}


def parse_columns(specs: Sequence[str] | None, targets: Sequence[str]) -> dict[str, str]:
    """`--column` values (`"query_text=question"`) as {contract column: input column}. Each target must be
    one of `targets`, the contract columns of the tables the job reads, and be mapped once."""
    mapping: dict[str, str] = {}
    for spec in specs or ():
        target, sep, source = (part.strip() for part in spec.partition("="))
        if not sep or not target or not source:
            raise SettingError("columns", f"{spec!r}: expected COLUMN=INPUT, e.g. query_text=question")
        if target not in targets:
            raise SettingError(
                "columns", f"{spec!r}: {target!r} is not a column this job reads ({', '.join(targets)})"
            )
        if target in mapping:
            raise SettingError("columns", f"{spec!r}: {target!r} is already read from {mapping[target]!r}")
        mapping[target] = source
    return mapping


@dataclass(frozen=True)
class Source:
    """One input table resolved on the driver. `rename`: (input column, contract column) pairs;
    `strings`: the contract columns read as strings; `transform`: a block function `read()` applies
    after renaming (the BEIR layout uses it to build the contract's columns)."""

    uri: str
    files: tuple[str, ...]
    format: str
    rename: tuple[tuple[str, str], ...] = ()
    strings: tuple[str, ...] = ()
    transform: Callable[..., pa.Table] | None = field(default=None, compare=False)
    transform_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def schemas(self) -> dict[str, pa.Schema]:
        """{file: its schema after renaming} (an empty JSON Lines file, which has none, is left out); one
        line naming the file when one cannot be read."""
        peeked = {f: self._peek(f)[0] for f in self.files}
        return {f: self._renamed(f, schema) for f, schema in peeked.items() if schema.names}

    def is_empty(self) -> bool:
        if self.format == "parquet":
            return uris.count_rows(list(self.files)) == 0
        return not any(self._peek(f)[1] for f in self.files)

    def row_count(self) -> int | None:
        """Rows from the Parquet footers; None for JSONL and CSV (known once read)."""
        return uris.count_rows(list(self.files)) if self.format == "parquet" else None

    def read(self, rename: bool = True):
        """A lazy Ray Dataset of the files, renamed (and transformed) onto the contract's column names;
        `rename=False`: the input's own columns (as `stage_copy` keeps them)."""
        import ray

        files, fs = list(self.files), uris.pyarrow_filesystem(self.uri)
        if self.format == "parquet":
            ds = ray.data.read_parquet(files, filesystem=fs)
        elif self.format == "csv":
            ds = ray.data.read_csv(files, filesystem=fs, convert_options=self._csv_options())
        else:
            options = pajson.ParseOptions(
                explicit_schema=pa.schema([(n, pa.string()) for n in self._json_strings()]),
                unexpected_field_behavior="infer",
            )
            ds = ray.data.read_json(files, filesystem=fs, file_extensions=None, parse_options=options)
        if not rename:
            return ds
        if self.rename:
            ds = ds.rename_columns(dict(self.rename))
        if self.transform is not None:
            ds = ds.map_batches(self.transform, fn_kwargs=dict(self.transform_kwargs), batch_format="pyarrow")
        return ds

    def read_table(self) -> pa.Table:
        """The whole input in this process, renamed and transformed as `read` does: for small inputs,
        which a Ray Data execution would only slow down."""
        parts = []
        for file in self.files:
            fs, path = uris.filesystem(file)
            with fs.open(path, "rb") as f:
                if self.format == "parquet":
                    table = pq.read_table(f)
                elif self.format == "csv":
                    table = pacsv.read_csv(f, convert_options=self._csv_options())
                else:
                    strings = pa.schema([(n, pa.string()) for n in self._json_strings()])
                    options = pajson.ParseOptions(explicit_schema=strings, unexpected_field_behavior="infer")
                    table = pajson.read_json(f, parse_options=options)
            if self.rename:
                table = table.rename_columns([dict(self.rename).get(n, n) for n in table.column_names])
            if self.transform is not None:
                table = self.transform(table, **dict(self.transform_kwargs))
            parts.append(table)
        return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})

    def size_bytes(self) -> int:
        return sum(
            int(uris.filesystem(f)[0].info(uris.filesystem(f)[1]).get("size") or 0) for f in self.files
        )

    # -- the driver's look at one file --------------------------------------------------------------

    def input_name(self, column: str) -> str:
        """The input's name for the contract column `column` (itself unless `--column` renames it)."""
        return next((src for src, dst in self.rename if dst == column), column)

    def _csv_options(self) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(
            column_types={self.input_name(n): pa.string() for n in self.strings},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
        )

    def _json_strings(self) -> list[str]:
        """Input columns read as strings: the contract string columns no file's first block holds as
        numbers (those are read as numbers and cast, as Parquet integer ids are)."""
        wanted = [self.input_name(n) for n in self.strings]
        numeric: set[str] = set()
        for f in self.files:
            for fld in self._peek(f)[0]:
                t = fld.type
                if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
                    numeric.add(fld.name)
        return [n for n in wanted if n not in numeric]

    def _peek(self, file: str) -> tuple[pa.Schema, bool]:
        """The file's schema before renaming, and whether its first block holds a row."""
        fs, path = uris.filesystem(file)
        try:
            with fs.open(path, "rb") as f:
                if self.format == "parquet":
                    meta = pq.ParquetFile(f).metadata
                    return meta.schema.to_arrow_schema(), meta.num_rows > 0
                if self.format == "csv":
                    reader = pacsv.open_csv(f, convert_options=self._csv_options())
                else:
                    reader = pajson.open_json(f)
                schema = reader.schema
                try:
                    return schema, reader.read_next_batch().num_rows > 0
                except StopIteration:
                    return schema, False
        except (pa.ArrowInvalid, OSError) as exc:
            if "Empty JSON" in str(exc):
                return pa.schema([]), False
            what = KIND[self.format]
            raise InputError(f"{file}: not readable as {what} ({type(exc).__name__}: {exc})") from exc

    def _renamed(self, file: str, schema: pa.Schema) -> pa.Schema:
        names = schema.names
        for src, dst in self.rename:
            if src not in names:
                raise InputError(
                    f"{file}: --column {dst}={src}: the input has no column {src!r} (columns present: "
                    f"{names})"
                )
            if dst in names:
                raise InputError(
                    f"{file}: --column {dst}={src}: the input also has a column {dst!r}; drop the mapping "
                    "or that column"
                )
        renames = dict(self.rename)
        return pa.schema([f.with_name(renames.get(f.name, f.name)) for f in schema])


def detect_format(uri: str, fmt: FileFormat) -> str:
    """`fmt` itself, or for auto the format the path's extension names (a directory or glob: the format
    of the files in it, which must agree)."""
    if fmt != "auto":
        return fmt
    fs, path = uris.filesystem(uri)
    if any(ch in path for ch in "*?["):
        candidates = fs.glob(path)
    elif fs.isdir(path):
        candidates = [p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith(("_", "."))]
    elif fs.exists(path):
        candidates = [path]
    else:
        raise InputError(f"{uri}: no such file or directory")
    found = {name for p in candidates for name, exts in EXTENSIONS.items() if p.endswith(exts)}
    if len(found) == 1:
        return found.pop()
    if not candidates:
        return "parquet"  # nothing to tell from: listing the files says what is missing
    if not found:
        raise InputError(
            f"{uri}: cannot tell the format from the file names (expected .parquet, .jsonl/.json or .csv); "
            "pass --format"
        )
    raise InputError(f"{uri}: holds files of several formats ({', '.join(sorted(found))}); pass --format")


def open_source(
    uri: str, fmt: FileFormat, columns: Mapping[str, str], contract: pa.Schema, strings: Sequence[str] = ()
) -> Source:
    """Resolve `uri` for a table whose contract is `contract`: `columns` ({contract column: input column},
    see `parse_columns`) may name columns of other tables; only this table's are applied. `strings`: the
    contract columns to read as strings (default: every string column of `contract`)."""
    resolved = detect_format(uri, fmt)
    files = uris.list_files(uri, EXTENSIONS[resolved], KIND[resolved])
    rename = tuple((src, dst) for dst, src in columns.items() if dst in contract.names)
    if strings == ():
        strings = [f.name for f in contract if pa.types.is_string(f.type)]
    return Source(uri, tuple(files), resolved, rename, tuple(strings))


def stage_source(source: Source, schema: pa.Schema, output: str) -> dict:
    """Write `source` as Parquet under `output`, projected onto `schema` (ids cast to strings, columns not
    in `schema` dropped), for the stages that read Parquet files. Returns {"files": [...], "rows": n}."""
    nullable = pa.schema([f.with_nullable(True) for f in schema])
    uris.remove(output)
    ds = source.read().map_batches(normalize_to, fn_kwargs={"schema": nullable}, batch_format="pyarrow")
    ds.write_parquet(output, filesystem=uris.pyarrow_filesystem(output))
    if not uris.exists(output):
        return {"files": [], "rows": 0}
    files = uris.list_parquet(output)
    return {"files": files, "rows": uris.count_rows(files)}


def stage_copy(source: Source, output: str) -> list[str]:
    """`source`'s files, under their own column names, copied to Parquet under `output` once: a copy whose
    record (`_source.json`) names the same files, sizes and modification times is reused."""
    record = uris.join(output, "_source.json")
    stamp = {"format": source.format, "files": [file_stamp(f) for f in source.files]}
    if uris.exists(record) and uris.read_json(record) == stamp:
        return uris.list_parquet(output)
    uris.remove(output)
    source.read(rename=False).write_parquet(output, filesystem=uris.pyarrow_filesystem(output))
    uris.write_json(record, stamp)
    return uris.list_parquet(output)


def file_stamp(uri: str) -> list:
    fs, path = uris.filesystem(uri)
    info = fs.info(path)
    return [uri, info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified"))]


def media_columns_with_values(files: list[str], columns: Sequence[str]) -> list[str]:
    """The media columns (of `columns`) that hold at least one reference in `files`, from Parquet
    statistics (no data read); a column without statistics counts as holding values."""
    found: set[str] = set()
    for uri in files:
        fs, path = uris.filesystem(uri)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        names = [meta.schema.column(j).name for j in range(meta.num_columns)]
        for j, name in enumerate(names):
            if name not in columns or name in found:
                continue
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                stats = group.column(j).statistics
                if stats is None or not stats.has_null_count or stats.null_count < group.num_rows:
                    found.add(name)
                    break
    return [name for name in columns if name in found]
