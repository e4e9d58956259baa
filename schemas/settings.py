"""Settings: dataclass fields that carry their own description, so that one definition gives a setting's
default, its `--help` line, its flag on every job that holds it, and the name its error messages use.

Actors' specs (`RerankerSpec`, `EmbedderSpec`, `MediaSpec`, `PoolSpec`) declare their fields with
`setting(...)`; job configs nest those specs instead of copying their fields; `jobs/cli.py` turns the tree
into argparse flags (with a prefix where a job holds two specs of one kind, e.g. `--rerank-*`, `--embed-*`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any


def setting(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    prefix: str | None = None,
    **cli: Any,
) -> Any:
    """A dataclass field with a one-line description.

    `flag`: the flag's name when it is not the field name (`--media-timeout` for `timeout_s`), without any
    prefix. `prefix`: for a nested spec, what its flags are prefixed with (`"rerank-"`). Other keyword
    arguments (`metavar`, `action`, `parse`) are handed to the CLI builder; `metavar` only where the value
    name it derives from the field's type and name (`N`, `SECONDS`, `URI`, `MODEL`) does not fit."""
    metadata = {"help": help, "flag": flag, "prefix": prefix, **cli}
    return field(default=default, default_factory=default_factory, metadata=metadata)


class SettingError(ValueError):
    """A bad value of one setting. `path` names the field from the job config down (`("pool", "actors")`);
    the CLI turns it into the flag the user typed (`--rerank-actors`), the Python API into `pool.actors`."""

    def __init__(self, name: str | tuple[str, ...], problem: str):
        self.path = (name,) if isinstance(name, str) else tuple(name)
        self.problem = problem
        super().__init__(f"{'.'.join(self.path)}: {problem}")

    def within(self, parent: str) -> SettingError:
        return SettingError((parent, *self.path), self.problem)


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """Raise a SettingError for the first of `names` whose value (when not None) is below `minimum`."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value >= minimum:
            raise SettingError(name, f"must be >= {minimum:g}, got {value!r}")


def one_of(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise SettingError(name, f"{value!r} is not one of {', '.join(choices)}")


def validate_nested(cfg: Any) -> None:
    """Validate every nested spec of `cfg` (its own `validate()`), naming a bad field by its path."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value) and hasattr(value, "validate"):
            try:
                value.validate()
            except SettingError as exc:
                raise exc.within(f.name) from None
