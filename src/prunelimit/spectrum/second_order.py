"""Forward passes whose gradients can be differentiated again, for any model.

Some PyTorch kernels have no double backward:
 - fused attention (``scaled_dot_product_attention``'s flash / memory-efficient / CPU-flash kernels);
   the math kernel is plain differentiable ops, so Hessian forwards run under ``sdpa_kernel(MATH)``;
 - ``hardsigmoid`` (MobileNet-V3's squeeze-excitation): its backward has no derivative, so it is computed
   as ``relu6(x + 3) / 6`` — the same function, whose backward is differentiable (the second derivative
   is zero almost everywhere either way).
Any other op without a second derivative makes the HVP fail; :func:`missing_derivative` reads which op
from PyTorch's message so the error can name it.
"""
from __future__ import annotations

import contextlib
import re

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from prunelimit.spectrum.lean_graphs import LeanGraphMode

_HARDSIGMOID = (F.hardsigmoid, torch._C._nn.hardsigmoid)


class TwiceDifferentiableMode(TorchFunctionMode):
    """Routes ops whose backward has no derivative through equal, twice-differentiable compositions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HARDSIGMOID:
            x = args[0] if args else kwargs["input"]
            return F.relu6(x + 3.0) / 6.0  # out of place even for inplace=True: the result is what is used
        return func(*args, **kwargs)


@contextlib.contextmanager
def second_order_forward(lean: bool):
    """Context for forward passes whose gradient graph will be differentiated again (``lean``: also
    the lean graphs of lean_graphs.py)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(TwiceDifferentiableMode())
        if lean:
            stack.enter_context(LeanGraphMode())
        yield


_MISSING = re.compile(r"derivative for (aten::[\w.]+) is not implemented")


def missing_derivative(err: BaseException) -> str | None:
    """The op named by PyTorch's 'derivative for aten::X is not implemented', else None."""
    m = _MISSING.search(str(err))
    return m.group(1) if m else None
