"""Every job's command line, generated from its config dataclass: one flag per setting, nested specs
flattened with their prefix, defaults and help taken from the fields (`schemas/settings.py`).

A job calls `run_job(ConfigClass, argv, ...)`: parse, build the config, validate it, check its inputs, run
it. User errors (bad flags, bad values, bad inputs, found before or during the run) exit 2 with one line
naming the flag (an unknown or abbreviated flag first of all, with the closest real one); a run that
completed with more failed rows than --max-error-rate allows exits 3; anything else is a bug or an
infrastructure failure and exits 1 with its traceback. `--help` shows each flag with a readable value name
(`--actors N`), under a heading per spec or group of settings, and ends with example command lines.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, Literal

from schemas.settings import SettingError
from schemas.tables import InputError, JobFailed, TooManyErrors

RAY_ADDRESS_HELP = (
    "Ray cluster address (default: RAY_ADDRESS, set by `ray job submit`, or a new local instance)"
)


PACKAGE = "ray-rerank"  # pyproject.toml's project name: `--version` reads its installed metadata

# The metavar of a flag that gives none, by the last word of its field's name, where that word alone does not
# say what the value is; otherwise N for an int, X for a float, the word itself for a string. A string field
# named for what it locates (--pairs, --output) takes a URI: a local path or s3://.
LOCATIONS = ("pairs", "corpus", "queries", "qrels", "output")
METAVAR_WORDS = {
    **dict.fromkeys(("s", "seconds", "interval"), "SECONDS"),
    "id": "ID",
    "implementation": "NAME",
    "bytes": "BYTES",
    "rate": "RATE",
}


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser that knows which flag sets which config field, to build the config back and to
    name the flag in a SettingError.

    `groups`: `--help` heading -> the top-level fields of `config_cls` listed under it (nested specs are a
    heading each already); `examples`: command lines shown at the end of `--help`. Flags are never
    abbreviated; an unknown one is refused, with the closest real flag, before any other check."""

    def __init__(
        self,
        config_cls: type,
        *,
        ray: bool = True,
        groups: Mapping[str, Sequence[str]] = types.MappingProxyType({}),
        examples: Sequence[str] = (),
        **kwargs: Any,
    ):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs["allow_abbrev"] = False
        self.examples = tuple(examples)
        if examples:
            shown = "\n".join("  " + line for line in examples)
            kwargs["epilog"] = "\n\n".join(filter(None, [f"examples:\n{shown}", kwargs.get("epilog")]))
        super().__init__(**kwargs)
        self.add_argument("--version", action="version", version=f"{PACKAGE} {package_version()}")
        self.config_cls = config_cls
        self.flags: dict[tuple[str, ...], str] = {}  # field path -> flag
        self.headings: dict[str, Any] = {}  # --help heading -> its argument group
        self.field_groups = _field_groups(self, config_cls, groups)
        _add_fields(self, self, config_cls, prefix="", path=())
        if ray:
            run = self.heading("run control")
            run.add_argument("--ray-address", default=None, metavar="ADDRESS", help=RAY_ADDRESS_HELP)
            run.add_argument(
                "--progress-interval",
                type=float,
                default=30.0,
                metavar="SECONDS",
                help="seconds between progress lines (pairs done, rate, ETA; Ray Data's own); 0: stage lines "
                "only (default: 30)",
            )

    def config(self, args: argparse.Namespace) -> Any:
        return _build(self.config_cls, args, ())

    def flag_for(self, path: tuple[str, ...]) -> str:
        return self.flags.get(path, ".".join(path))

    def heading(self, title: str) -> Any:
        """The argument group titled `title`, made on first use (headings show in that order)."""
        if title not in self.headings:
            self.headings[title] = self.add_argument_group(title)
        return self.headings[title]

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        for flag in self.unknown_flags(args):
            close = closest(flag, [o for o in self._option_string_actions if o.startswith("--")])
            self.error(f"unrecognized argument {flag}" + (f"; did you mean {close}?" if close else ""))
        return super().parse_known_args(args, namespace)

    def unknown_flags(self, args: Sequence[str]) -> Iterator[str]:
        """The option-like words of `args` that name no flag (`--batch` for `--batch-tokens` included), as
        argparse tells options from values: not negative numbers, not words with a space, none after `--`."""
        for arg in args:
            if arg == "--":
                return
            if arg[:1] != "-" or arg == "-" or " " in arg or self._negative_number_matcher.match(arg):
                continue
            flag = arg.split("=", 1)[0]
            if flag not in self._option_string_actions:
                yield flag

    def error(self, message: str) -> typing.NoReturn:
        """One line, as every other user error: the usage of a job with a hundred flags would bury it."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def closest(flag: str, options: Sequence[str]) -> str:
    """The options `flag` is a prefixed setting of (`--embed-model or --rerank-model` for `--model`), else
    the option most like it (`--batch-tokens` for `--batch-size`) or those tied for it; "" when none is."""
    prefixed = sorted(o for o in options if o.endswith("-" + flag.removeprefix("--")))
    if prefixed:
        return " or ".join(prefixed)
    matches = difflib.get_close_matches(flag, options, n=4)
    ratio = [difflib.SequenceMatcher(None, flag, m).ratio() for m in matches]
    return " or ".join(sorted(m for m, r in zip(matches, ratio, strict=True) if r == max(ratio)))


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: pip install -e .)"


def _field_groups(parser: SettingsParser, cls: type, groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Top-level field name -> its argument group, the headings made in the order `groups` gives them."""
    names = {f.name for f in fields(cls)}
    by_field = {}
    for title, members in groups.items():
        for name in members:
            if name not in names:
                raise TypeError(f"{cls.__name__} has no field {name!r} to list under {title!r}")
            by_field[name] = parser.heading(title)
    return by_field


def _add_fields(
    parser: SettingsParser, group: Any, cls: type, prefix: str, path: tuple[str, ...], defaults: Any = None
) -> None:
    """Add a flag per leaf field of `cls`. `defaults`: the instance a nested spec defaults to, when the job
    gives one (a job may supply a value for a field its spec leaves required, e.g. the benchmark's model)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if is_dataclass(kind):
            sub = parser.add_argument_group(f.metadata.get("group") or f.metadata["help"])
            nested = default if default is not MISSING else None
            _add_fields(parser, sub, kind, prefix + (f.metadata.get("prefix") or ""), (*path, f.name), nested)
            continue
        flag = "--" + prefix + (f.metadata.get("flag") or f.name.replace("_", "-"))
        dest = "__".join((*path, f.name))
        target = parser.field_groups.get(f.name, group) if not path else group
        target.add_argument(flag, dest=dest, **_argparse_kwargs(f, kind, default))
        parser.flags[(*path, f.name)] = flag


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _argparse_kwargs(f: Field, kind: Any, default: Any) -> dict[str, Any]:
    meta = f.metadata
    kwargs: dict[str, Any] = {"help": meta["help"]}
    base = _strip_none(kind)
    if meta.get("action"):
        kwargs["action"] = meta["action"]
        if meta["action"] == "append":
            kwargs["metavar"] = _metavar(f.name, str)
    elif base is bool:
        kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    elif typing.get_origin(base) is Literal or "choices" in meta:
        kwargs["choices"] = meta.get("choices") or typing.get_args(base)
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        kwargs["type"] = meta.get("parse") or _comma_list(item)
        kwargs["metavar"] = meta.get("metavar") or "A,B,..."
    else:
        kwargs["type"] = meta.get("parse") or base
        kwargs["metavar"] = _metavar(f.name, base)
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    if default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        if default not in (None, ()) and base is not bool and "default" not in meta["help"]:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            kwargs["help"] += f" (default: {shown})"
    return kwargs


def _metavar(name: str, base: Any) -> str:
    """What `--help` shows as the value of a flag: a word a user reads, never the internal dest."""
    word = name.rsplit("_", 1)[-1]
    if base is str and word in LOCATIONS:
        return "URI"
    if word in METAVAR_WORDS:
        return METAVAR_WORDS[word]
    return "N" if base is int else "X" if base is float else word.upper()


def _strip_none(kind: Any) -> Any:
    """`int | None` -> int: None is the default of an optional setting, never typed on the command line."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _comma_list(item: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected comma-separated {item.__name__} values"
            ) from None

    return parse


def _build(cls: type, args: argparse.Namespace, path: tuple[str, ...]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            values[f.name] = _build(kind, args, (*path, f.name))
        else:
            value = getattr(args, "__".join((*path, f.name)))
            values[f.name] = tuple(value) if isinstance(value, list) else _absolute(f.name, value)
    return cls(**values)


# Settings that name local paths. Ray workers do not share the driver's working directory (a job that joins
# a running instance with --ray-address, say), so a relative path is made absolute here, on the driver:
# an input when it exists locally (a hub id such as Qwen/Qwen3-Reranker-0.6B is left alone), an output
# whenever it names no scheme (s3://...).
LOCAL_INPUTS = ("pairs", "run", "corpus", "queries", "qrels", "beir", "model", "eval_queries")
LOCAL_OUTPUTS = ("output",)


def _absolute(name: str, value: Any) -> Any:
    if not isinstance(value, str) or "://" in value or os.path.isabs(value):
        return value
    if name in LOCAL_OUTPUTS or (name in LOCAL_INPUTS and os.path.exists(value)):
        return os.path.abspath(value)
    return value


def user_error(parser: SettingsParser, exc: Exception) -> int:
    """Print one line naming the problem (and the flag, for a SettingError); the exit code 2."""
    if isinstance(exc, SettingError):
        message = f"{parser.flag_for(exc.path)}: {exc.problem}"
    else:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_job(
    parser: SettingsParser,
    argv: list[str] | None,
    run: Callable[[Any, Any], str],
    check: Callable[[Any], Any] = lambda cfg: None,
) -> int:
    """Parse `argv`, validate the config (`cfg.validate()`, then `check(cfg)` for driver-side input checks
    before any cluster work), connect to Ray and print what `run(cfg, checked)` returns, `checked` being
    what `check` returned. User errors exit 2."""
    args = parser.parse_args(argv)
    try:
        cfg = parser.config(args).validate()
        checked = check(cfg)
    except (InputError, ValueError) as exc:
        return user_error(parser, exc)
    from jobs.ray_session import connect

    connect(args.ray_address, args.progress_interval)
    try:
        print(run(cfg, checked))
    except InputError as exc:  # found only while running: a changed configuration, nothing embedded, ...
        return user_error(parser, exc)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TooManyErrors as exc:  # the output is complete; its manifest says why the run is not good
        print(exc.summary)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0
