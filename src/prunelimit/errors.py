"""The one base class of errors a user can cause (a leaf module: stdlib only).

``PrunelimitError`` subclasses ``ValueError`` so code that catches ``ValueError`` keeps working. The
CLI prints a ``PrunelimitError`` as one ``error: ...`` line (exit 2); any other exception is a bug
and keeps its traceback. Messages name the thing that is wrong (file, key, value) and how to fix it.
"""
from __future__ import annotations


class PrunelimitError(ValueError):
    """Bad input: a config key or value, a file, a flag, or a combination of them."""
