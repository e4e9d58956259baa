"""Every job's command line, generated from its config dataclass: one flag per setting, nested specs
flattened with their prefix, defaults and help taken from the fields (`schemas/settings.py`).

A job calls `run_job(ConfigClass, argv, ...)`: parse, build the config, validate it, check its inputs, run
it. User errors (bad flags, bad values, bad inputs, found before or during the run) exit 2 with one line
naming the flag; a run that completed with more failed rows than --max-error-rate allows exits 3; anything
else is a bug or an infrastructure failure and exits 1 with its traceback.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, Literal

from schemas.settings import SettingError
from schemas.tables import InputError, JobFailed, TooManyErrors

RAY_ADDRESS_HELP = (
    "Ray cluster address (default: RAY_ADDRESS, set by `ray job submit`, or a new local instance)"
)


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser that knows which flag sets which config field, to build the config back and to
    name the flag in a SettingError."""

    def __init__(self, config_cls: type, *, ray: bool = True, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.config_cls = config_cls
        self.flags: dict[tuple[str, ...], str] = {}  # field path -> flag
        _add_fields(self, self, config_cls, prefix="", path=())
        if ray:
            self.add_argument("--ray-address", default=None, help=RAY_ADDRESS_HELP)
            self.add_argument(
                "--progress-interval",
                type=float,
                default=30.0,
                help="seconds between progress lines (pairs done, rate, ETA; Ray Data's own); 0: stage lines "
                "only (default: 30)",
            )

    def config(self, args: argparse.Namespace) -> Any:
        return _build(self.config_cls, args, ())

    def flag_for(self, path: tuple[str, ...]) -> str:
        return self.flags.get(path, ".".join(path))


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
        group.add_argument(flag, dest=dest, **_argparse_kwargs(f, kind, default))
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
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    if default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        if default is not None and base is not bool and "default" not in meta["help"]:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            kwargs["help"] += f" (default: {shown})"
    return kwargs


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
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


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
