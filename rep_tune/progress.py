"""Progress bars for long work, on rich (the one terminal library rep-tune uses, tables included).

``ProgressBar`` has the small tqdm-like surface the code needs (``update``, ``set_description``,
``set_postfix``, ``close``, context manager), so call sites stay one line. Output goes to stderr;
off a terminal rich draws nothing live and prints the bar once when it closes, so logs stay short.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping


class ProgressBar:
    """One bar: ``total`` steps (None = unknown), a description and a free-form postfix."""

    def __init__(self, total: int | None = None, desc: str = "", *, unit: str = "it", enabled: bool = True,
                 initial: int = 0, transient: bool = False) -> None:
        self.enabled, self.n, self.total, self.unit = enabled, initial, total, unit
        self._desc, self._post = desc, ""
        self._progress = self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                  TextColumn("{task.fields[post]}"),
                                  console=Console(file=sys.stderr), transient=transient)
        self._progress.start()
        self._task = self._progress.add_task(desc, total=total, completed=initial, post="")

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def set_total(self, total: int | None) -> None:
        """Change the number of steps: work that ends early by design (a time limit) ends at a full bar."""
        self.total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def set_description(self, desc: str) -> None:
        self._desc = desc
        if self._progress is not None:
            self._progress.update(self._task, description=desc)

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kw: Any) -> None:
        items = {**dict(values or {}), **kw}
        self._post = " ".join(f"{k}={v}" for k, v in items.items())
        if self._progress is not None:
            self._progress.update(self._task, post=self._post)

    def set_postfix_str(self, text: str) -> None:
        self._post = text
        if self._progress is not None:
            self._progress.update(self._task, post=text)

    def write(self, text: str) -> None:
        """Print a line above the bar (or plainly when the bar is off)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _CurrentStdout:
    """``sys.stdout`` as it is when written to, not as it was when a default argument was bound:
    a default of ``out=STDOUT`` follows a later redirection (pytest's capture, contextlib.redirect_stdout)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(sys.stdout, name)

    def write(self, s: str) -> int:
        return sys.stdout.write(s)

    def flush(self) -> None:
        sys.stdout.flush()


STDOUT = _CurrentStdout()
