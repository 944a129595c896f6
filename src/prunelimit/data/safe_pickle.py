"""Reading the CIFAR python batches without letting a pickle run code.

``pickle.load`` calls whatever callable a file names, so a doctored "data_batch_1" could run
``os.system``. The CIFAR batches only need numpy's array reconstruction and ``_codecs.encode``
(how protocol-2 pickles spell bytes); ``find_class`` hands out exactly those and refuses the rest.
"""
from __future__ import annotations

import _codecs
import importlib
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from prunelimit.errors import PrunelimitError


class UnsafePickleError(PrunelimitError):
    """The pickle asked for a callable outside the allow-list."""


def _numpy_core(submodule: str):
    # numpy >= 2 moved numpy.core to numpy._core (importing numpy.core warns); files carry either name.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        # protocol-5 pickles of arrays go through _frombuffer (bytes -> array, no code execution)
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array/dtype reconstruction and ``_codecs.encode``."""

    _ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this file is not a plain numpy/dict pickle "
                f"(only numpy arrays, lists, dicts and bytes are allowed)") from None


def restricted_load(f: BinaryIO, encoding: str = "bytes") -> Any:
    """Unpickle ``f`` with ``RestrictedUnpickler``; ``encoding="bytes"`` reads Python 2 pickles such as
    the CIFAR batches (their str keys arrive as ``bytes``, e.g. ``b"data"``)."""
    return RestrictedUnpickler(f, encoding=encoding).load()


def restricted_loads(data: bytes, encoding: str = "bytes") -> Any:
    return restricted_load(io.BytesIO(data), encoding=encoding)
