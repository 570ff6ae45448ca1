"""Progress bars on stderr (rich): the export's layers, the benchmark's requests.

One owner for how progress looks. On a terminal the bar redraws in place; otherwise (a log,
a pipe) rich prints nothing until the end, so logs stay one line per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                    console=Console(stderr=True), transient=False)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield ``items`` while a bar counts them up to ``total``."""
    with _progress() as progress:
        task = progress.add_task(description, total=total, note="")
        for item in items:
            yield item
            progress.advance(task)


class Counter:
    """A bar advanced by hand (``advance``), with a note after it; a no-op when disabled."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self._progress = _progress() if enabled else None
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, note="")

    def advance(self, note: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, **({"note": note} if note is not None else {}))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
