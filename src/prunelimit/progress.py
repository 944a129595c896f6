"""When to draw progress bars: one policy for the command line and the library (a leaf module: stdlib only).

A tqdm bar redraws itself with ``\\r`` many times a second; in a terminal that is one moving line, but in a
log file or a pipe every redraw is kept (a sweep writes about 100 KB of them). So bars are drawn only when
stderr is a terminal; piped or logged runs get the per-stage lines the pipeline prints anyway."""
from __future__ import annotations

import sys


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (False for files, pipes and a replaced ``sys.stderr``)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def progress_wanted(show_progress: bool | None) -> bool:
    """``show_progress`` as given, or with ``None`` (the library's default) bars only in a terminal."""
    return stderr_is_terminal() if show_progress is None else bool(show_progress)
