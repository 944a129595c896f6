"""Pieces of user-facing error messages shared by every folder (a leaf module: stdlib only)."""
from __future__ import annotations

import difflib
from typing import Iterable


def few(items: list[str], n: int = 3) -> str:
    """The first ``n`` items, comma-separated, with ', ...' when there are more."""
    s = ", ".join(items[:n])
    return s + (", ..." if len(items) > n else "")


def suggest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate (case-insensitively as a fallback), or ''."""
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=1, cutoff=0.6)
    if not close:
        lower = {c.lower(): c for c in cands}
        close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
        close = [lower[c] for c in close]
    return f" (did you mean {close[0]!r}?)" if close else ""
