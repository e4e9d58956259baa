"""Stage contracts: the columns a stage needs and the columns it adds, checked along a chain on the driver.

A pipeline lists its stages in order and `check_chain` walks that list against the input's column names
before any cluster work, so a stage wired before the stage that feeds it, or an input without a column a
stage reads, fails in one line that names the stage and the column, not an hour later on a worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.tables import InputError


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline: `needs`, the columns that must exist when it runs; `adds`, the columns it
    adds (or rewrites) for the stages after it."""

    name: str
    needs: tuple[str, ...] = ()
    adds: tuple[str, ...] = ()


def check_chain(input_names: Iterable[str], stages: Sequence[Stage], where: str | None = None) -> None:
    """Raise InputError at the first stage that needs a column neither the input (`input_names`) nor an
    earlier stage provides. `where` (a file) prefixes the message."""
    available = set(input_names)
    for k, stage in enumerate(stages):
        for column in stage.needs:
            if column not in available:
                earlier = ", ".join(s.name for s in stages[:k]) or "none"
                raise InputError(
                    f"{where + ': ' if where else ''}stage {stage.name} needs column {column!r}, which no "
                    f"earlier stage adds and the input lacks (earlier stages: {earlier})"
                )
        available.update(stage.adds)
