"""Loading checkpoints safely and with errors that say what is wrong.

``torch.load(..., weights_only=True)`` always: a checkpoint never runs pickled code unless the caller
opts in with ``allow_pickle=True``.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.messages import few as _few


class CheckpointError(PrunelimitError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def load_checkpoint_file(path: str | os.PathLike, *, allow_pickle: bool = False,
                         map_location: Any = "cpu") -> Any:
    """Read a ``torch.save`` file with ``weights_only=True`` (unless ``allow_pickle``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is a directory, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty (0 bytes); it was not written completely")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        text = _one_line(str(e))
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        if not allow_pickle and glob:
            raise CheckpointError(
                f"checkpoint {str(path)!r} contains a pickled Python object ({glob.group(1)}), not just tensors; "
                f"loading it could run arbitrary code. If you trust the file, pass --allow-pickle "
                f"(allow_pickle=True)") from None
        raise CheckpointError(f"checkpoint {str(path)!r} is not a valid PyTorch checkpoint (corrupt, truncated "
                              f"or another kind of file)") from None
    except Exception as e:  # zip, EOF, key and runtime errors: all mean the bytes are not a checkpoint
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt, truncated or not a PyTorch checkpoint "
            f"({type(e).__name__}: {_one_line(str(e))[:120]})") from None


def _one_line(text: str) -> str:
    """torch's messages span lines and carry ANSI colour codes; the CLI prints one plain line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(text.split())


def extract_state_dict(obj: Any, path: str | os.PathLike = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Accept a plain state_dict, ``{"state_dict": ...}`` or ``{"model": ...}``; strip DDP ``module.``."""
    sd = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"{str(path)!r} holds no state_dict: expected a mapping of parameter names to tensors, "
            f"or a dict with a 'state_dict' entry")
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("_orig_mod."):  # torch.compile wrapper
            k = k[len("_orig_mod."):]
        out[k] = v
    return out


def load_model_weights(model: nn.Module, path: str | os.PathLike, *, allow_pickle: bool = False) -> dict:
    """Load a checkpoint file into ``model`` strictly; name every missing/unexpected/mis-shaped key.

    Returns the whole loaded object (so callers can read e.g. its ``"epoch"``). ``model`` may be wrapped
    (torch.compile, DataParallel, DDP): the weights go into the plain model inside."""
    from prunelimit.pruning.names import unwrap_model

    model = unwrap_model(model)
    obj = load_checkpoint_file(path, allow_pickle=allow_pickle)
    sd = extract_state_dict(obj, path)
    check_state_dict(model, sd, path)
    model.load_state_dict(sd, strict=True)
    return obj if isinstance(obj, dict) else {"state_dict": sd}


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike = "<checkpoint>") -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the model {type(model).__name__}: " + "; ".join(parts)
            + ". Check --model/--num-classes match the checkpoint.")

