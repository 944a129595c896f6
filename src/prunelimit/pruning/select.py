"""Exact selection of the smallest magnitudes across many layers, without concatenating them.

Magnitudes are compared as integer *keys*: the IEEE-754 bit pattern of ``|w|`` (sign bit cleared).
For non-negative floats the bit pattern is monotone in the value, so ordering keys orders
magnitudes exactly — no rounding, ties stay ties. float32 keys are int32 (half and bfloat16 are
widened to float32, which is exact); if any layer is float64 all keys are int64. NaN keys sort
above +inf, as in ``torch.sort``, so NaN weights are pruned last.

The k-th smallest key of all layers together is found by a radix select, one digit of at most
16 bits per pass (2 passes for int32 keys, 4 for int64): each pass histograms, layer by layer, the
next digit of the keys inside the current bucket and narrows the bucket to the digit holding
rank k. Only layer-sized scratch buffers (allocated once per call and reused, so large
temporaries are not page-faulted again for every layer and pass) and a histogram of at most
131 072 bins exist besides the weights: nothing N-sized is ever built. CPU and CUDA alike.

Ties are broken by (layer order, flat index): the earliest tied weights are pruned first. A layer's
decision is a :class:`Cut` — prune every key below ``t`` and the first ``ties`` keys equal to ``t``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from prunelimit.errors import PrunelimitError

_DIGIT_BINS = 1 << 16  # a digit has at most 16 bits
_OUT = 1 << 16  # keys outside the current bucket are counted in bins >= _OUT and ignored


@dataclass(frozen=True)
class KeySpace:
    """How magnitudes of one selection are turned into order-preserving integer keys."""

    float_dtype: torch.dtype
    int_dtype: torch.dtype
    abs_mask: int  # clears the sign bit
    shifts: tuple[int, ...]  # one radix pass per digit, most significant first; digit j = key bits [shift_j, shift_j-1)
    bits: int  # key bits (the sign bit is always 0)


FLOAT32_KEYS = KeySpace(torch.float32, torch.int32, 0x7FFF_FFFF, (15, 0), 31)
FLOAT64_KEYS = KeySpace(torch.float64, torch.int64, 0x7FFF_FFFF_FFFF_FFFF, (47, 31, 15, 0), 63)


@dataclass(frozen=True)
class Cut:
    """One layer's pruning decision: prune keys < ``t`` and the first ``ties`` keys == ``t``."""

    t: int
    ties: int
    pruned: int | None  # weights this cut prunes in its layer (None when not counted)


NO_CUT = Cut(0, 0, 0)  # keys are >= 0, so nothing is below 0: prunes nothing


@dataclass(frozen=True)
class Pool:
    """The magnitudes of one layer taking part in a selection.

    With ``stop`` set only keys < ``stop`` plus ``stop_ties`` copies of ``stop`` take part (the
    layer's own smallest ``size`` weights, i.e. what its floor lets go of).
    """

    weight: Tensor
    size: int
    stop: int | None = None
    stop_ties: int = 0


class Workspace:
    """Layer-sized scratch buffers per device, reused across layers and passes."""

    def __init__(self, space: KeySpace, weights: Sequence[Tensor]):
        self.space = space
        self._largest: dict[torch.device, int] = {}
        for w in weights:
            self._largest[w.device] = max(self._largest.get(w.device, 0), w.numel())
        self._buffers: dict[tuple[torch.device, str], Tensor] = {}

    def buffer(self, device: torch.device, slot: str, n: int, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or self.space.int_dtype
        key = (device, slot)
        buf = self._buffers.get(key)
        if buf is None:
            buf = torch.empty(self._largest[device], dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:n]

    def keys(self, weight: Tensor) -> Tensor:
        """Flat keys of ``|weight|`` in row-major order, shape ``(numel,)``; valid until the next call."""
        space = self.space
        out = self.buffer(weight.device, "key", weight.numel())
        x = weight.detach().reshape(-1)
        if x.dtype == space.float_dtype:
            return torch.bitwise_and(x.view(space.int_dtype), space.abs_mask, out=out)
        out.view(space.float_dtype).copy_(x)  # half/bfloat16 -> float32 (or -> float64) is exact
        return out.bitwise_and_(space.abs_mask)


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1); ValueError naming ``name`` otherwise."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise PrunelimitError(f"{name} must be a number in [0, 1) (fraction of weights removed), "
                         f"got {sparsity!r} of type {type(sparsity).__name__}")
    value = float(sparsity)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise PrunelimitError(f"{name}={sparsity!r} is outside [0, 1); it is the fraction of prunable weights "
                         f"removed, e.g. 0.9 for 90 %")
    return value


def prune_count(sparsity: float, n: int) -> int:
    """k = floor(sparsity * n + 0.5): round half up, so .5 always rounds the same way."""
    return int(math.floor(sparsity * n + 0.5))


def key_space(weights: Sequence[Tensor], names: Sequence[str] | None = None) -> KeySpace:
    for i, w in enumerate(weights):
        if not w.is_floating_point():
            label = names[i] if names else f"#{i}"
            raise PrunelimitError(f"prunable parameter {label} has dtype {w.dtype}; magnitude pruning needs "
                             f"floating-point weights — exclude it with exclude=[...]")
    return FLOAT64_KEYS if any(w.dtype == torch.float64 for w in weights) else FLOAT32_KEYS


def kth_key(pools: Sequence[Pool], k: int, ws: Workspace) -> tuple[int, int]:
    """``(t, m)``: t is the k-th smallest key of all pools together (1 <= k <= total size) and m is how
    many copies of t are among the k smallest, so ``k - m`` pooled keys are below t."""
    total = sum(p.size for p in pools)
    if not 1 <= k <= total:
        raise RuntimeError(f"kth_key: k={k} outside [1, {total}]")
    space = ws.space
    below = 0  # pooled keys known to lie below the current bucket
    prefix = 0  # key >> prev_shift of every key in the current bucket
    prev_shift = space.bits
    for shift in space.shifts:
        width = prev_shift - shift  # bits of this digit, <= 16
        hists: dict[torch.device, Tensor] = {}  # summed on each layer's device, moved once per pass
        hist = torch.zeros(1 << width, dtype=torch.int64)
        for pool in pools:
            digits = _bucket_digits(pool, ws, shift, width, prefix, first=prev_shift == space.bits)
            counts = torch.bincount(digits, minlength=1 << width)[:1 << width]
            dev = pool.weight.device
            hists[dev] = counts if dev not in hists else hists[dev].add_(counts)
            if pool.stop is not None and pool.stop_ties and pool.stop >> prev_shift == prefix:
                hist[(pool.stop >> shift) & ((1 << width) - 1)] += pool.stop_ties
        for h in hists.values():
            hist += h.cpu()
        cum = hist.cumsum(0)
        rank = k - below
        digit = int(torch.searchsorted(cum, rank))
        if not 1 <= rank <= int(cum[-1]):
            raise RuntimeError("kth_key: the weights changed during the selection")
        below += int(cum[digit - 1]) if digit else 0
        prefix = (prefix << width) | digit
        prev_shift = shift
    return prefix, k - below


def _bucket_digits(pool: Pool, ws: Workspace, shift: int, width: int, prefix: int, first: bool) -> Tensor:
    """This pass's digit of every key of ``pool`` in the current bucket (values < 2**width); keys outside
    the bucket get values >= 2**width, spread over 65 536 bins (one shared bin would serialise the
    counting). Shape ``(numel,)``, in the workspace's "digits" buffer."""
    w, space = pool.weight, ws.space
    digits = ws.buffer(w.device, "digits", w.numel())
    raw = pool.stop is None and w.dtype == space.float_dtype
    # raw: the weight's own bits with the sign still set; the masks below clear it (saves a full pass)
    src = w.detach().reshape(-1).view(space.int_dtype) if raw else ws.keys(w)
    if first:
        torch.bitwise_right_shift(src, shift, out=digits).bitwise_and_(_DIGIT_BINS - 1)
    else:
        # in the bucket the key bits above the digit equal prefix: xor leaves only the digit (< 2**width)
        if shift:
            torch.bitwise_right_shift(src, shift, out=digits).bitwise_xor_(prefix << width)
        else:
            torch.bitwise_xor(src, prefix << width, out=digits)
        if raw:
            digits.bitwise_and_(space.abs_mask >> shift)
        spread = ws.buffer(w.device, "spread", w.numel())
        torch.bitwise_and(digits, _DIGIT_BINS - 1, out=spread).add_(_OUT)
        torch.minimum(digits, spread, out=digits)  # outside the bucket: some value in [2**width, 2 * _OUT)
    if pool.stop is not None:  # keys beyond the layer's floor take no part
        flags = ws.buffer(w.device, "flags", w.numel(), torch.bool)
        digits.masked_fill_(torch.ge(src, pool.stop, out=flags), 2 * _OUT - 1)
    return digits


def smallest_cuts(pools: Sequence[Pool], k: int, ws: Workspace, *, want_masks: bool,
                  want_counts: bool = True) -> tuple[list[Cut], list[Tensor | None], list[int]]:
    """Cuts pruning exactly the k smallest pooled magnitudes, ties by (pool order, flat index).

    Returns ``(cuts, masks, reached)``: masks (True = kept, the weight's shape and device) when
    ``want_masks``; ``reached[i]`` = how many of pool i's weights are <= the k-th key, counted only
    for pools whose ``stop`` lies at or below it (else -1) — it tells whether a floor bound.
    """
    if k == 0:
        masks = [torch.ones_like(p.weight, dtype=torch.bool) if want_masks else None for p in pools]
        return [NO_CUT] * len(pools), masks, [-1] * len(pools)
    t, m = kth_key(pools, k, ws)
    return resolve_cuts(pools, t, m, ws, want_masks=want_masks, want_counts=want_counts)


def resolve_cuts(pools: Sequence[Pool], t: int, m: int, ws: Workspace, *, want_masks: bool,
                 want_counts: bool = True) -> tuple[list[Cut], list[Tensor | None], list[int]]:
    """One pass: hand the ``m`` tied copies of key ``t`` to the pools in order and build the cuts."""
    cuts: list[Cut] = []
    masks: list[Tensor | None] = []
    reached: list[int] = []
    for pool in pools:
        w = pool.weight
        key = ws.keys(w)
        flags = ws.buffer(w.device, "flags", w.numel(), torch.bool)
        if pool.stop is not None and pool.stop < t:
            # the layer's whole eligible set lies below t: it gives exactly its floor-limited share
            cut_t, r = pool.stop, pool.stop_ties
        else:
            cut_t, r = t, 0
            if m:
                avail = pool.stop_ties if pool.stop == t else int(torch.count_nonzero(torch.eq(key, t, out=flags)))
                r = min(avail, m)
                m -= r
        reached.append(int(torch.count_nonzero(torch.le(key, t, out=flags)))
                       if pool.stop is not None and pool.stop <= t else -1)
        keep = torch.ge(key, cut_t) if want_masks else torch.ge(key, cut_t, out=flags)
        pruned = key.numel() - int(torch.count_nonzero(keep)) + r if want_counts else None
        if r:
            keep[torch.eq(key, cut_t).nonzero()[:r, 0]] = False
        cuts.append(Cut(cut_t, r, pruned))
        masks.append(keep.view(w.shape) if want_masks else None)
    return cuts, masks, reached


def layer_cut(weight: Tensor, count: int, ws: Workspace) -> Cut:
    """The cut pruning ``weight``'s ``count`` smallest magnitudes (ties by flat index)."""
    if count == 0:
        return NO_CUT
    t, m = kth_key([Pool(weight, weight.numel())], count, ws)
    return Cut(t, m, count)


def mask_from_cut(weight: Tensor, cut: Cut, ws: Workspace) -> Tensor:
    """Bool mask (True = kept) of ``weight``'s shape and device for one layer's cut."""
    key = ws.keys(weight)
    keep = torch.ge(key, cut.t)
    if cut.ties:
        keep[torch.eq(key, cut.t).nonzero()[:cut.ties, 0]] = False
    return keep.view(weight.shape)
