"""Leaner second-order graphs for Hessian-vector products (used by ``HessianOperator``).

PyTorch's double-backward formulas compute pieces an HVP throws away:
 - convolution: ``_convolution_double_backward`` forms the gradient w.r.t. the conv's input even
   when nothing needs it (the first conv, on data: a transposed conv per batch per HVP);
 - ReLU, max-pool: the derivative of their backward w.r.t. the saved activation is zero a.e., but
   it is materialised (zeros_like, then added into the activation's gradient).
While the first-order graphs are built, ``LeanGraphMode`` routes these ops through the Functions
below: the same forward and first-order kernels, and a backward whose own backward computes only
what is used. Same numbers up to float rounding. (Rewriting every conv, not only those on data,
as a pair of bilinear Functions measured no faster.)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

class _DataConvWeightGrad(torch.autograd.Function):
    """grad_W = convolution_backward(gO, x)[weight] with x data: differentiable in gO only, by the
    one convolution conv(x, ggW) (``weight`` only gives the shape)."""

    @staticmethod
    def forward(grad_out, x, weight, conf):
        stride, padding, dilation, groups = conf
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [False, True, False])[1]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.conf = inputs[3]

    @staticmethod
    def backward(ctx, grad_grad_weight):
        x, = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        grad_out = torch.ops.aten.convolution(x, grad_grad_weight, None, stride, padding, dilation, False,
                                              [0] * len(stride), groups)
        return grad_out, None, None, None

    generate_vmap_rule = True  # batched HVPs (is_grads_batched) vmap these backwards


class _DataConv(torch.autograd.Function):
    """conv(x, W, b) for data x (needs no grad)."""

    @staticmethod
    def forward(x, weight, bias, conf):
        stride, padding, dilation, groups = conf
        return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False,
                                          [0] * len(stride), groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.conf = inputs[3]

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = _DataConvWeightGrad.apply(grad_out, x, weight.detach(), ctx.conf)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum([0, *range(2, grad_out.ndim)])
        return None, grad_w, grad_b, None

    generate_vmap_rule = True


class _Relu(torch.autograd.Function):
    """relu whose backward reads its output detached (the mask is piecewise constant)."""

    @staticmethod
    def forward(x):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_out):
        out, = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad_out, out.detach(), 0)

    generate_vmap_rule = True


class _MaxPool2d(torch.autograd.Function):
    """max_pool2d (with indices) whose backward reads its input detached."""

    @staticmethod
    def forward(x, kernel_size, stride, padding, dilation, ceil_mode):
        return torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])
        ctx.conf = inputs[1:]
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_out, _grad_indices):
        x, indices = ctx.saved_tensors
        grad_in = torch.ops.aten.max_pool2d_with_indices_backward(grad_out, x.detach(), *ctx.conf, indices)
        return grad_in, None, None, None, None, None

    generate_vmap_rule = True


def _per_dim(value, d: int) -> list[int] | None:
    """An int or a length-d sequence of ints as a list of d ints; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * d
    if isinstance(value, (tuple, list)) and len(value) == d and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _conv_padding(padding, weight: torch.Tensor, stride, dilation, d: int) -> list[int] | None:
    if padding == "valid":
        return [0] * d
    if padding == "same":  # symmetric only (odd effective kernel, stride 1), as F.conv*d pads it
        if stride != [1] * d or any(dl * (k - 1) % 2 for dl, k in zip(dilation, weight.shape[2:])):
            return None
        return [dl * (k - 1) // 2 for dl, k in zip(dilation, weight.shape[2:])]
    return _per_dim(padding, d)


# ReLU / max-pool: a custom Function's backward costs a Python call per batch per HVP (~20-40 µs),
# the zero tensor it saves costs a fill + an add of the activation; measured break-even ~2^17-2^18
# elements (MLP hidden layers of batches of 128 got 5-10 % slower, 64x16x32x32 CNN maps 5-15 % faster).
_LEAN_MIN_NUMEL = 1 << 18


def _worth_it(x) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad and x.numel() >= _LEAN_MIN_NUMEL


_CONV_FUNCS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_RELU_FUNCS = (torch.relu, torch.Tensor.relu, nn.functional.relu)
_POOL_FUNCS = (nn.functional.max_pool2d, nn.functional.max_pool2d_with_indices, torch.max_pool2d)
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_PLAIN = (torch.Tensor, nn.Parameter)


class LeanGraphMode(TorchFunctionMode):
    """While active: torch.conv1d/2d/3d on data (input without grad, weight with), out-of-place
    relu and 2-d max-pooling of large tensors that require grad go through the Functions above
    (what nn.Conv*d, nn.ReLU() and nn.MaxPool2d call). Anything else, and tensor subclasses, run as is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if all(t in _PLAIN for t in types):
            out = self._lean(func, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    @staticmethod
    def _lean(func, args, kwargs):
        d = _CONV_FUNCS.get(func)
        if d is not None:
            a = dict(zip(_CONV_ARGS, args), **kwargs)
            x, w, b = a.get("input"), a.get("weight"), a.get("bias")
            if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor) and not x.requires_grad
                    and w.requires_grad and x.ndim == w.ndim == d + 2):
                return None
            stride, dilation = _per_dim(a.get("stride", 1), d), _per_dim(a.get("dilation", 1), d)
            if stride is None or dilation is None:
                return None
            padding = _conv_padding(a.get("padding", 0), w, stride, dilation, d)
            if padding is None:
                return None
            return _DataConv.apply(x, w, b, (stride, padding, dilation, int(a.get("groups", 1))))
        if func in _RELU_FUNCS:
            x = args[0] if args else kwargs.get("input")
            if kwargs.get("inplace", False) or len(args) > 1 or not _worth_it(x):
                return None  # in-place relu keeps PyTorch's own node (rebasing history is not worth it)
            return _Relu.apply(x)
        if func in _POOL_FUNCS:
            a = dict(zip(_POOL_ARGS, args), **kwargs)
            x = a.get("input")
            if not _worth_it(x) or x.ndim not in (3, 4):
                return None
            kernel = _per_dim(a.get("kernel_size"), 2)
            stride = a.get("stride")
            stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
                else _per_dim(stride, 2)
            padding, dilation = _per_dim(a.get("padding", 0), 2), _per_dim(a.get("dilation", 1), 2)
            if None in (kernel, stride, padding, dilation):
                return None
            out, indices = _MaxPool2d.apply(x, kernel, stride, padding, dilation, bool(a.get("ceil_mode", False)))
            with_indices = func is nn.functional.max_pool2d_with_indices or a.get("return_indices", False)
            return (out, indices) if with_indices else out
        return None
