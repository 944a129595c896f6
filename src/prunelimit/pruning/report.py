"""Size and compute of a masked model, and a compressed export of its weights.

``sparsity_report(model, masks, example_input)``: per masked layer the parameters, the non-zeros (kept
weights), and the multiply-adds of one example, dense and with the pruned weights skipped (each weight
entry is used once per output position, so sparse MACs = dense MACs x kept / total — the theoretical
speed-up ShrinkBench reports); in total also the bytes of all parameters dense vs in the compressed export.

``save_compressed`` writes every masked parameter as its kept values plus a bit-packed mask (1 bit per
weight) in one safetensors file, every other parameter and buffer dense; ``load_compressed`` rebuilds the
dense tensors exactly and copies them into the model. No pickle either way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelimit.errors import PrunelimitError
from prunelimit.runs.io import atomic_write_bytes

from .names import canonical_masks, parameter_aliases, unwrap_model
from .prunable import layer_kind

FORMAT = "prunelimit.compressed/1"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass(frozen=True)
class LayerReport:
    name: str  # parameter name
    layer: str  # module type
    params: int
    nonzeros: int  # kept weights
    dense_macs: int | None  # per example; None when the parameter is not used by a hooked layer's forward
    sparse_macs: int | None


@dataclass(frozen=True)
class SparsityReport:
    layers: tuple[LayerReport, ...]
    params: int  # all parameters of the model
    nonzeros: int  # all parameters minus the pruned weights
    dense_macs: int  # sum over layers with known MACs, per example
    sparse_macs: int
    bytes_dense: int  # all parameters, dense
    bytes_compressed: int  # all parameters, masked ones as kept values + 1 bit per weight

    @property
    def speedup(self) -> float:
        return self.dense_macs / self.sparse_macs if self.sparse_macs else float("inf")

    @property
    def compression(self) -> float:
        return self.params / self.nonzeros if self.nonzeros else float("inf")

    def format(self, max_layers: int = 20) -> str:
        lines = [f"{'layer':<40} {'type':<18} {'params':>11} {'non-zeros':>11} {'dense MACs':>13} {'sparse MACs':>13}"]
        for x in self.layers[:max_layers]:
            d = f"{x.dense_macs:,}" if x.dense_macs is not None else "-"
            s = f"{x.sparse_macs:,}" if x.sparse_macs is not None else "-"
            lines.append(f"{x.name[-40:]:<40} {x.layer[:18]:<18} {x.params:>11,} {x.nonzeros:>11,} {d:>13} {s:>13}")
        if len(self.layers) > max_layers:
            lines.append(f"... {len(self.layers) - max_layers} more layers")
        macs = (f"MACs per example {self.dense_macs:,} dense, {self.sparse_macs:,} sparse (theoretical speed-up "
                f"{self.speedup:.2f}x)" if any(x.dense_macs is not None for x in self.layers) else "MACs not measured")
        lines.append(f"total: {self.params:,} parameters, {self.nonzeros:,} non-zero ({self.compression:.2f}x fewer); "
                     f"{macs}; {self.bytes_dense:,} bytes dense, {self.bytes_compressed:,} compressed")
        return "\n".join(lines)


def _macs_hooks(model: nn.Module, uses: dict[int, list]):
    """Forward hooks recording, per weight tensor id, ``(row slice or None, positions per example)``: the
    weight (those rows) multiplies the input at that many output positions."""
    def add(w, positions, rows=None):
        uses.setdefault(id(w), []).append((rows, positions))

    def hook(module, args, kwargs, output):
        if isinstance(module, nn.MultiheadAttention):
            q, k, v = (kwargs.get(n, a) for n, a in zip(("query", "key", "value"), list(args) + [None] * 3))
            seq = 1 if module.batch_first and q.ndim == 3 else 0
            lq, lk, lv = (x.shape[seq] for x in (q, k, v))
            e = module.embed_dim
            if module.in_proj_weight is not None:  # packed: rows [0, E) for q, [E, 2E) for k, [2E, 3E) for v
                for i, n in enumerate((lq, lk, lv)):
                    add(module.in_proj_weight, n, slice(i * e, (i + 1) * e))
            else:
                for w, n in ((module.q_proj_weight, lq), (module.k_proj_weight, lk), (module.v_proj_weight, lv)):
                    add(w, n)
            add(module.out_proj.weight, lq)  # F.multi_head_attention_forward uses it without calling out_proj
            return
        out = output[0] if isinstance(output, tuple) else output
        x = args[0] if args else next(iter(kwargs.values()), None)
        # the example is ONE sample, so every position of a whole tensor belongs to it (a model may fold
        # windows or heads into the batch axis)
        w = module.weight
        if isinstance(module, nn.modules.conv._ConvTransposeNd):  # every input position meets every weight
            add(w, x.numel() // x.shape[1 if x.ndim == w.ndim else 0])
        elif isinstance(module, nn.modules.conv._ConvNd):
            add(w, out.numel() // out.shape[1 if out.ndim == w.ndim else 0])
        elif isinstance(out, torch.Tensor):  # linear-like: the last axis holds the features
            add(w, out.numel() // out.shape[-1])
    return [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
            if isinstance(m, nn.MultiheadAttention)
            or (layer_kind(m) is not None and isinstance(getattr(m, "weight", None), torch.Tensor))]


class _FunctionalUses(TorchFunctionMode):
    """Counts weights used through ``F.linear`` / ``F.conv*d`` calls outside their layer's own forward
    (torchvision's Swin attention calls ``F.linear(x, self.qkv.weight)``): the hooks never see those."""

    def __init__(self, uses: dict[int, list]):
        super().__init__()
        self.uses = uses

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = _FUNCTIONAL.get(func)
        w = (args[1] if len(args) > 1 else kwargs.get("weight")) if kind else None
        if isinstance(w, torch.Tensor) and isinstance(out, torch.Tensor) and out.ndim:
            x = args[0]
            if kind == "linear":
                n = out.numel() // w.shape[0]
            elif kind == "conv":
                n = out.numel() // out.shape[1 if out.ndim == w.ndim else 0]
            else:  # transposed conv: every input position meets every weight
                n = x.numel() // x.shape[1 if x.ndim == w.ndim else 0]
            self.uses.setdefault(id(w), []).append((None, n))
        return out


_FUNCTIONAL = {F.linear: "linear", torch._C._nn.linear: "linear", F.conv1d: "conv", F.conv2d: "conv",
               F.conv3d: "conv", F.conv_transpose1d: "transpose", F.conv_transpose2d: "transpose",
               F.conv_transpose3d: "transpose"}


@torch.no_grad()
def sparsity_report(model: nn.Module, masks: Mapping[str, torch.Tensor], example_input=None) -> SparsityReport:
    """Parameters, non-zeros, MACs (one example; ``example_input`` is a batch of ONE example: a tensor, a
    tuple of positional inputs or a dict of keyword inputs) and bytes of ``model`` pruned by ``masks``.
    Without ``example_input`` MACs are not measured (reported as 0)."""
    from prunelimit.train.batches import batch_size, call_model

    plain = unwrap_model(model)
    masks = canonical_masks(model, masks)
    params = dict(plain.named_parameters())
    uses: dict[int, list] = {}
    if example_input is not None:
        if batch_size((example_input,)) != 1:
            raise PrunelimitError("sparsity_report: example_input must hold ONE example (batch dimension 1); "
                                  "MACs are reported per example")
        handles = _macs_hooks(plain, uses)
        functional: dict[int, list] = {}
        was = plain.training
        plain.eval()
        try:
            with _FunctionalUses(functional):
                call_model(plain, example_input)
            for key, found in functional.items():  # only where no layer hook counted the weight
                uses.setdefault(key, found)
        finally:
            plain.train(was)
            for h in handles:
                h.remove()
    owner = {}
    for mname, module in plain.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), type(module).__name__)
    layers = []
    for name, mask in masks.items():
        p = params[name]
        dense = sparse = None
        if id(p) in uses:
            dense = sparse = 0
            for rows, n in uses[id(p)]:
                part = mask if rows is None else mask[rows]
                dense += part.numel() * n
                sparse += int(part.sum()) * n
        layers.append(LayerReport(name, owner.get(id(p), "?"), p.numel(), int(mask.sum()), dense, sparse))
    total = sum(p.numel() for p in params.values())
    pruned = sum(x.params - x.nonzeros for x in layers)
    dense_bytes = sum(p.numel() * p.element_size() for p in params.values())
    compressed = sum(_compressed_bytes(params[n], masks[n]) for n in masks) + \
        sum(p.numel() * p.element_size() for n, p in params.items() if n not in masks)
    return SparsityReport(tuple(layers), total, total - pruned, sum(x.dense_macs or 0 for x in layers),
                          sum(x.sparse_macs or 0 for x in layers), dense_bytes, compressed)


def _compressed_bytes(p: torch.Tensor, mask: torch.Tensor) -> int:
    return int(mask.sum()) * p.element_size() + (mask.numel() + 7) // 8


def _pack(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).cpu()
    padded = torch.zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8)
    padded[:flat.numel()] = flat.to(torch.uint8)
    return (padded.view(-1, 8) * _BITS).sum(1, dtype=torch.int32).to(torch.uint8)


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = packed.view(-1, 1).bitwise_and(_BITS).ne(0)
    return bits.reshape(-1)[:numel]


def save_compressed(path: str | os.PathLike, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Path:
    """Write ``model``'s weights with every masked parameter as kept values + a bit-packed mask."""
    plain = unwrap_model(model)
    masks = canonical_masks(model, masks)
    tensors, shapes = {}, {}
    for name, p in plain.named_parameters():
        t = p.detach().cpu()
        if name in masks:
            keep = masks[name].cpu().reshape(-1)
            tensors[f"{name}::values"] = t.reshape(-1)[keep].contiguous()
            tensors[f"{name}::mask"] = _pack(keep)
            shapes[name] = list(t.shape)
        else:
            tensors[name] = t.contiguous()
    for name, b in plain.named_buffers():
        tensors[name] = b.detach().cpu().contiguous()
    return atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT, "shapes": json.dumps(shapes)}))


@torch.no_grad()
def load_compressed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a :func:`save_compressed` file into ``model`` (plain or wrapped): every parameter and buffer exactly."""
    path = Path(path)
    if not path.is_file():
        raise PrunelimitError(f"compressed weights file {str(path)!r} does not exist; check the path")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise PrunelimitError(f"{str(path)!r} is not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise PrunelimitError(f"{str(path)!r} is not a compressed weights file of prunelimit (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r}); write it with save_compressed")
    shapes = json.loads(meta["shapes"])
    dense = {k: v for k, v in stored.items() if "::" not in k}
    for name, shape in shapes.items():
        values, keep = stored[f"{name}::values"], _unpack(stored[f"{name}::mask"], int(torch.Size(shape).numel()))
        full = torch.zeros(keep.numel(), dtype=values.dtype)
        full[keep] = values
        dense[name] = full.view(shape)
    plain = unwrap_model(model)
    aliases = parameter_aliases(model)
    targets = dict(plain.named_parameters()) | dict(plain.named_buffers())
    missing = [n for n in targets if n not in dense]
    unexpected = [k for k in dense if aliases.get(k, k) not in targets]
    if missing or unexpected:
        raise PrunelimitError(f"{str(path)!r} does not fit {type(plain).__name__}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}; it was saved from another model")
    for name, t in targets.items():
        src = dense[name]
        if tuple(src.shape) != tuple(t.shape):
            raise PrunelimitError(f"{str(path)!r}: {name} has shape {tuple(src.shape)}, the model {tuple(t.shape)}")
        t.copy_(src)
    return model
