"""Reading the original code's ``weight_mask.npy``, behind an explicit opt-in.

The original saves its masks with ``np.save`` as an object array (a pickle) of torch tensors that
live on the GPU, one per prunable layer in module order. Unpickling can run arbitrary code, so it
is refused unless the caller passes ``allow_pickle=True`` (CLI: ``--allow-pickle``). Tensors are
pickled through ``torch.storage._load_from_bytes``, which calls ``torch.load`` without a
``map_location`` and so fails on a machine without CUDA; our unpickler routes it to a CPU load.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .prunable import prunable_parameters
from prunelimit.errors import PrunelimitError

_NPY_MAGIC = b"\x93NUMPY"


def _storage_to_cpu(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _CPUMaskUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch.storage" and name == "_load_from_bytes":
            return _storage_to_cpu
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # NumPy 1.x pickles under NumPy 2
        return super().find_class(module, name)


def _read_items(path: Path) -> list:
    with open(path, "rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            f.seek(0)
            return list(_CPUMaskUnpickler(f).load())
        f.seek(0)
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            obj = _CPUMaskUnpickler(f).load()
            return list(obj.ravel()) if isinstance(obj, np.ndarray) else list(obj)
        f.seek(0)
        return list(np.lib.format.read_array(f, allow_pickle=False))  # one numeric array: first axis = layers


def load_legacy_mask_npy(path: str | os.PathLike, model: nn.Module, *, allow_pickle: bool = False,
                         include=None, exclude=None) -> dict[str, Tensor]:
    """Masks from an original ``weight_mask.npy`` keyed by ``model``'s prunable parameter names.

    Non-zero entries are kept (True). The file must hold one mask per prunable parameter
    (``include``/``exclude`` as in the original run), in module order, each of its parameter's shape.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelimitError(f"legacy mask file {str(path)!r} does not exist or is not a file; check the path")
    if not allow_pickle:
        raise PrunelimitError(f"legacy mask file {str(path)!r} is a pickle (np.save of torch tensors); unpickling can run "
                         f"arbitrary code. If you trust the file, opt in with --allow-pickle (allow_pickle=True); "
                         f"masks written by prunelimit are safetensors files and need no such flag.")
    try:
        items = _read_items(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError, OSError) as e:
        raise PrunelimitError(f"legacy mask file {str(path)!r} cannot be read as an np.save'd list of mask tensors "
                         f"({type(e).__name__}: {e})") from None
    params = prunable_parameters(model, include, exclude)
    if len(items) != len(params):
        raise PrunelimitError(f"legacy mask file {str(path)!r} holds {len(items)} masks but {type(model).__name__} has "
                         f"{len(params)} prunable parameters; it was made for another model or other "
                         f"include/exclude settings")
    masks = {}
    for i, (item, (name, p)) in enumerate(zip(items, params)):
        t = item if isinstance(item, Tensor) else torch.as_tensor(np.asarray(item))
        if tuple(t.shape) != tuple(p.shape):
            raise PrunelimitError(f"legacy mask file {str(path)!r}: mask #{i} has shape {tuple(t.shape)} but parameter "
                             f"{name!r} has {tuple(p.shape)}; the file was made for another model")
        masks[name] = (t.detach() != 0).to(p.device)
    return masks
