"""Hessian-vector products of the mean training loss over a whole dataset.

``HessianOperator`` represents H = d²L/dθ² with L = (1/N) Σ_b n_b · loss_b + regularizer, where
loss_b is the mean loss of batch b (n_b samples) and N the total sample count over all batches
(and, under DDP, over all ranks). It is never formed: ``matvec(v)`` returns H v by double
back-propagation (Pearlmutter's trick), ``matmat(V)`` does several vectors in one backward pass.

Speed: with ``cache_graph`` the first-order gradient g = Σ_b (n_b/N) ∇loss_b is built ONCE with
``create_graph=True`` and kept, so every HVP is a single ``autograd.grad(g, θ, grad_outputs=v)``
over the cached graphs. Without it each HVP re-runs forward + backward on every batch (what
PyHessian does with a dataloader). Caching holds every batch's activations (≈ 1 MiB per CIFAR image
for ResNet-18), so it is bounded by a memory budget (memory.py; default half the available RAM or
free CUDA memory): the graph of the first batch is measured, and ``"auto"`` caches as many batches as
fit (leaving room for one recomputed batch) and recomputes the others in every HVP. ``True`` caches
all and refuses when they do not fit; ``False`` caches none. ``cache_report`` says what was chosen.

Leaner graphs: the first-order graphs are built under ``LeanGraphMode`` (lean_graphs.py), which drops the
parts of PyTorch's double-backward formulas an HVP throws away (the first conv's input gradient;
zero tensors from ReLU and max-pool). Small CNN below: -25 % per HVP; MLPs: 0-10 %.

Measured per HVP (CPU, 1 thread, median ms on a shared 2-core machine; the cases of
benchmarks/bench_hessian.py), and why the alternatives are not used ("recompute": forward +
backward + double backward per batch, PyHessian's dataloader path):
                       recompute     cached double backward     torch.func          torch.func.linearize
                                     plain      lean            jvp(grad(loss))     per HVP   + build once
  digits FC, 1 batch      21.6        14.1      12.5              30.7               12.6      0.7 s
  digits FC, 12 batches   22.4        14.3      13.4              55.9               16.2      3.1 s
  CNN, 4 batches of 64   218.6       123.9      91.1             248.0               92.5      1.3 s
Forward-over-reverse recomputes forward and backward every HVP; linearize caches that primal but
traces (make_fx) every batch, more than 32-128 HVPs save. One concatenated graph instead of per-batch
graphs measured no faster (slower for the CNN). So there is no per-case choice to make: the cached
double backward wins wherever the cache fits.
"""
from __future__ import annotations

import collections.abc
import contextlib
import inspect
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from prunelimit import dist
from prunelimit.pruning.names import unwrap_model
from prunelimit.spectrum.second_order import missing_derivative, second_order_forward
from prunelimit.train.batches import ModelLoss, batch_size, call_model, split_batch, to_device
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum.memory import GraphMeter, MemoryBudget, format_bytes, resolve_budget
from prunelimit.spectrum.parameters import (describe_left_out, hessian_parameters, left_out_parameters,  # noqa: F401
                                           resolve_params, trainable_numel)



@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Run in eval mode (dropout off, batch-norm running stats) and restore each module's flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor],
          batch: int | None = None) -> torch.Tensor:
    """Concatenate per-parameter gradients into one flat vector (or (batch, dim) rows);
    ``None`` (a parameter the output does not depend on) becomes zeros."""
    parts = []
    for g, p in zip(grads, params):
        if g is None:
            shape = (p.numel(),) if batch is None else (batch, p.numel())
            parts.append(torch.zeros(shape, dtype=p.dtype, device=p.device))
        else:
            parts.append(g.reshape(-1) if batch is None else g.reshape(batch, -1))
    return torch.cat(parts, dim=-1)


# batched_probes="auto", per device. Measured on the 2-core CPU (1 thread, benchmarks/bench_probes.py,
# every batch recomputed, so the probes share its forward + backward): the vmap'd double backward ran
# at 0.80-0.94x the loop's speed for 2-8 probes on the digits MLP, 0.60-0.80x on the small CNN and
# 0.68-0.84x on ResNet-18 (it loses more the more probes), so the CPU loops. Sharing the forward +
# backward itself is what pays: 8 probes cost 1.6x (MLP), 1.7x (CNN), 1.5x (ResNet-18) less than 8
# separate HVPs. On CUDA vmap is the default (fewer, larger kernels); not measured (no GPU here).
BATCHED_PROBES_AUTO = {"cuda": True}


def _batched_probes_choice(value: bool | str, device: torch.device) -> tuple[bool, str]:
    """(use the vmap'd backward?, why) for HessianOperator(batched_probes=value)."""
    key = value.lower() if isinstance(value, str) else value
    if key in (True, "true"):
        return True, "batched_probes=true"
    if key in (False, "false"):
        return False, "batched_probes=false"
    if key != "auto":
        raise PrunelimitError(f"batched_probes={value!r} is invalid; use 'auto', True or False")
    chosen = BATCHED_PROBES_AUTO.get(device.type, False)
    return chosen, f"batched_probes=auto on {device.type}"


class HessianOperator:
    """H of the size-weighted mean loss over ``batches`` (+ ``regularizer``) w.r.t. ``params``.

    ``batches`` must be re-iterable (a list or a DataLoader); each item is ``(inputs, targets)`` and
    ``loss_fn(model(inputs), targets)`` must return the batch's MEAN loss. As in training (see
    ``train/batches.py``), inputs may be a tensor, a tuple (positional) or a dict (keyword arguments), the
    loss receives the model's raw output, and ``pl.model_loss(fn)`` with ``fn(model, batch)`` takes any
    batch. Forwards run under the math attention kernel and with ``hardsigmoid`` decomposed, so models with
    attention and MobileNet-V3 have second derivatives (``second_order.py``); a compiled or DataParallel
    model is differentiated through its plain module. Under DDP each rank passes
    its own shard; HVPs and counts are summed over ranks so every rank sees the full-data H v.
    Random augmentation in ``batches`` changes H between passes: use deterministic transforms.

    Which parameters (``params``; ``spectrum/parameters.py``): by default the weights and biases of the
    prunable layer types, the paper's convention — norm layers, embedding tables and a weight tied to an
    embedding are left out, and a warning says how many (``op.left_out`` names them). ``params="all"``:
    every trainable parameter; ``"prunable"``: the default set without the warning; or a list of
    ``(name, parameter)`` pairs (``model.named_parameters()``) or plain parameters of the model.
    """

    lean_graphs = True  # build graphs under LeanGraphMode; a subclass with False uses PyTorch's plain ones

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: Iterable, *,
                 params: Sequence[tuple[str, nn.Parameter]] | Sequence[nn.Parameter] | str | None = None,
                 regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
                 device: torch.device | str | None = None, cache_graph: bool | str = "auto",
                 memory_budget: int | float | str | MemoryBudget | None = None,
                 lean_graphs: bool | None = None, batched_probes: bool | str = "auto",
                 show_progress: bool = False):
        """``memory_budget``: bytes the cached graphs may take (int, '6GiB', a fraction of the available
        memory, or None for ``memory.DEFAULT_FRACTION`` of it). ``lean_graphs``: build the first-order
        graphs without the parts an HVP throws away (lean_graphs.py; default: the class attribute,
        True); False runs PyTorch's plain double backward, the reference the tests compare to.
        ``batched_probes``: how ``matmat`` runs the double backward of several vectors (probes) over a
        graph: True one vmap'd backward (``is_grads_batched``), False a loop of backwards, "auto" (the
        default) picks by device (see ``BATCHED_PROBES_AUTO``). Either way the probes share each
        batch's forward and first-order backward; ``cache_report`` says which was chosen."""
        # DDP's hooks do not support double backward, nor does a compiled graph: use the plain module
        model = unwrap_model(model)
        named, by_default = resolve_params(model, params)
        if not named:
            what = ("has no trainable Conv1d/Conv2d/Linear parameters" if params is None or params == "prunable"
                    else "has no trainable parameters" if params == "all" else "was given an empty params list")
            raise PrunelimitError(f"model {type(model).__name__} {what}, so there is no Hessian to take; pass "
                             "params=[(name, parameter), ...] with the parameters to differentiate")
        for name, p in named:
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise PrunelimitError(f"params entry {name!r} is not a tensor that requires grad; "
                                 "pass (name, nn.Parameter) pairs of trainable parameters")
        modes = {True: True, False: False, "true": True, "false": False, "auto": "auto"}
        key = cache_graph.lower() if isinstance(cache_graph, str) else cache_graph
        if not isinstance(key, (bool, str)) or key not in modes:
            raise PrunelimitError(f"cache_graph={cache_graph!r} is invalid; use True, False or 'auto' "
                             "(SpectrumConfig's 'true'/'false' strings work too)")
        cache_graph = modes[key]
        if isinstance(batches, collections.abc.Iterator):
            raise PrunelimitError("batches is a one-shot iterator; pass something re-iterable such as a "
                             "list of (inputs, targets) or a DataLoader")
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self._cache_mode = cache_graph
        self.regularizer = regularizer
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._note_left_out(model, by_default)
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self._starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]  # offsets in a flat vector
        self.dtype = self.params[0].dtype
        if any(p.dtype != self.dtype for p in self.params):
            raise PrunelimitError(f"params of model {type(model).__name__} mix dtypes "
                             f"{sorted({str(p.dtype) for p in self.params})}; convert the model to one dtype")
        self.device = torch.device(device) if device is not None else self.params[0].device
        for name, p in named:
            if p.device != self.device:
                raise PrunelimitError(f"parameter {name!r} is on {p.device} but device={self.device}; "
                                 f"move the model first with model.to({str(self.device)!r})")
        self.show_progress = show_progress
        self.num_matvecs = 0
        if lean_graphs is not None:
            if not isinstance(lean_graphs, bool):
                raise PrunelimitError(f"lean_graphs={lean_graphs!r} must be True or False")
            self.lean_graphs = lean_graphs
        self.budget = resolve_budget(memory_budget, self.device) if cache_graph is not False else None
        self.batched_hvp, self._batched_why = _batched_probes_choice(batched_probes, self.device)
        with torch.enable_grad():  # graphs are needed even when built inside torch.no_grad()
            self._build(cache_graph)

    # ------------------------------------------------------------------ construction
    def _note_left_out(self, model: nn.Module, by_default: bool) -> None:
        """``left_out`` (names), ``left_out_summary`` and ``trainable_numel``; the default parameter set says
        in a warning what it leaves out (a set the caller chose is taken as meant)."""
        self.left_out_parameters = left_out_parameters(model, self.params)
        self.left_out = [x.name for x in self.left_out_parameters]
        self.left_out_summary = describe_left_out(self.left_out_parameters)
        self.trainable_numel = trainable_numel(model)
        if by_default and self.left_out:
            covered = sum(p.numel() for p in self.params)
            warnings.warn(f"{type(self).__name__}: the default parameter set (weights and biases of prunable "
                          f"layers, the paper's convention) covers {covered:,} of {self.trainable_numel:,} "
                          f"trainable parameters; left out: {self.left_out_summary} (names in op.left_out). Pass "
                          f"params='all' to include them, or params='prunable' to keep this set without this "
                          f"warning", UserWarning,
                          stacklevel=3 if type(self).__init__ is HessianOperator.__init__ else 4)  # the caller's line

    def _batches(self, desc: str, skip: int = 0):
        """Yield (inputs, targets, n) on the operator's device, with an optional progress bar; the
        first ``skip`` batches (the cached ones) are passed over without moving them."""
        bar = tqdm(self.batches, desc=desc, leave=False,
                   disable=not (self.show_progress and dist.is_main()))
        for i, item in enumerate(bar):
            if i < skip:
                continue
            if isinstance(self.loss_fn, ModelLoss):
                yield to_device(item, self.device), None, batch_size(item)
                continue
            inputs, targets = split_batch(item, f"batch {i}")
            yield to_device(inputs, self.device), to_device(targets, self.device), batch_size((inputs, targets))

    def _graph_mode(self):
        """Context for forward passes whose gradient graph will be differentiated again."""
        return second_order_forward(self.lean_graphs)

    def _batch_loss(self, inputs, targets, i: int) -> torch.Tensor:
        if isinstance(self.loss_fn, ModelLoss):
            loss = self.loss_fn(self.model, inputs)  # inputs is the whole batch here
        else:
            loss = self.loss_fn(call_model(self.model, inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PrunelimitError(f"loss_fn must return the batch's mean loss as a scalar tensor; batch {i} "
                             f"gave {type(loss).__name__} of shape {getattr(loss, 'shape', None)}")
        return loss.reshape(())

    def _plan_cache(self, cache_graph: bool | str, first_bytes: int, gradient_bytes: int = 0) -> int:
        """How many batches to cache, from the measured graph size of the first batch (``first_bytes``,
        of which ``gradient_bytes`` are the summed gradients, held once for all cached batches)."""
        try:
            total = len(self.batches)
        except TypeError:
            total = None  # unknown length: keep room for one recomputed batch
        first_bytes = max(first_bytes - gradient_bytes, 1)
        budget = self.budget.bytes - gradient_bytes
        fits_all = total is not None and total * first_bytes <= budget
        if cache_graph is True:
            if not fits_all:
                need = "an unknown number of" if total is None else f"{total} x {format_bytes(first_bytes)} ="
                raise PrunelimitError(
                    f"cache_graph=true needs the gradient graphs of all batches ({need} "
                    f"{format_bytes(total * first_bytes) if total else 'batches'}) but the memory budget is "
                    f"{self.budget}; use cache_graph='auto' (caches what fits, recomputes the rest), a larger "
                    f"memory_budget, or smaller batches")
            return total
        if fits_all:
            return total
        return max(0, budget // first_bytes - 1)  # one batch's room for recomputing the others

    def _build(self, cache_graph: bool | str) -> None:
        """One pass over the data: count samples, check the loss, and cache the gradient graphs of as
        many batches as the memory budget allows (all, some or none)."""
        # Σ_b n_b ∇loss_b per parameter (None: unused), each with its graph. Per-parameter tensors,
        # scaled through the scalar loss, keep the HVP backward free of per-batch cat/scale nodes
        # (measured ~5 % per HVP on 12 batches against flat per-batch vectors).
        grads: list[torch.Tensor | None] = [None] * len(self.params)
        count, loss_sum, bad_batch, sizes = 0, torch.zeros((), dtype=torch.float64), -1, []
        plan = 0 if cache_graph is False else None   # batches to cache (None: until batch 0 is measured)
        self.graph_bytes_first, self.gradient_bytes = None, 0
        with _eval_mode(self.model):
            for i, (x, y, n) in enumerate(self._batches("Hessian: caching gradient graphs"
                                                          if cache_graph is not False else "Hessian: checking loss")):
                if plan is None or i < plan:
                    meter = GraphMeter(self.params, self.device)
                    with meter:
                        with self._graph_mode():
                            loss = self._batch_loss(x, y, i)
                        g = torch.autograd.grad(loss * n, self.params, create_graph=True, allow_unused=True)
                        meter.add(g)
                    grads = [a if b is None else b if a is None else a + b for a, b in zip(grads, g)]
                    if plan is None:
                        self.graph_bytes_first = meter.bytes
                        self.gradient_bytes = meter.gradient_bytes
                        plan = self._plan_cache(cache_graph, meter.bytes, meter.gradient_bytes)
                        if plan == 0:
                            grads = [None] * len(self.params)
                else:
                    with torch.no_grad():
                        loss = self._batch_loss(x, y, i)
                if not torch.isfinite(loss).item() and bad_batch < 0:
                    bad_batch = i
                loss_sum += loss.detach().double().cpu() * n
                count += n
                sizes.append(n)
        plan = self._settle_batches(count, loss_sum, bad_batch, sizes, plan)
        self._graph = None
        self.cache_report = self._describe_cache()   # one line: budget, cached/recomputed, probe batching
        if plan:
            # g = Σ_b (n_b / N) ∇loss_b over the cached batches: one graph whose backward is their share
            # of the full-data HVP (this rank's); the other batches are recomputed per HVP.
            self._graph = tuple(None if g is None else g / self.num_samples for g in grads)
        self._build_regularizer()
        self._gradient = None

    def _settle_batches(self, count: int, loss_sum: torch.Tensor, bad_batch: int, sizes: list[int],
                        plan: int | None) -> int:
        """After the pass over the data (this operator's and GaussNewtonOperator's): sum the sample count,
        the loss and any non-finite batch over the ranks, refuse an empty or non-finite pass, and record
        the counts. Returns the number of cached batches."""
        batches, plan = len(sizes), min(plan or 0, len(sizes))
        stats = torch.tensor([float(count), loss_sum.item(), float(bad_batch >= 0)], dtype=torch.float64,
                             device=self.device)
        dist.all_reduce_sum(stats)
        if stats[2].item() > 0:
            where = f"batch {bad_batch}" if bad_batch >= 0 else "a batch on another rank"
            raise PrunelimitError(f"the loss at the current weights is not finite ({where}); the model or data "
                             "contains inf/nan — check the checkpoint and the inputs before the Hessian")
        if stats[0].item() == 0:
            raise PrunelimitError("batches is empty; pass at least one (inputs, targets) batch")
        self.local_count, self.num_samples = count, int(stats[0].item())
        self.loss = stats[1].item() / self.num_samples
        self.num_batches, self.cached_batches, self._cached_count = batches, plan, sum(sizes[:plan])
        self.cached = plan == batches                 # every batch's graph is cached
        return plan

    def _build_regularizer(self) -> None:
        """The regularizer's gradient graph (its exact Hessian joins every product) and its loss."""
        self._reg_graph = None
        if self.regularizer is None:
            return
        reg = self.regularizer(self.model)
        if not isinstance(reg, torch.Tensor) or reg.numel() != 1 or not torch.isfinite(reg).item():
            raise PrunelimitError(f"regularizer(model) must return a finite scalar tensor; got {reg!r}")
        self.loss += reg.item()
        if reg.requires_grad:
            self._reg_graph = torch.autograd.grad(reg.reshape(()), self.params, create_graph=True,
                                                  allow_unused=True)

    def _describe_cache(self) -> str:
        probes = (f"; several probes per HVP share each batch's forward + backward, their double backward "
                  f"{'batched (vmap)' if self.batched_hvp else 'looped'} ({self._batched_why})")
        if self.budget is None:
            return f"Hessian: {self.num_batches} batch(es) recomputed in every HVP (cache_graph=false){probes}"
        per = (f"{format_bytes(self.graph_bytes_first or 0)} (of which {format_bytes(self.gradient_bytes)} "
               f"first-order gradients, held once)")
        return (f"Hessian: memory budget {self.budget}; gradient graph of batch 0 = {per}; caching "
                f"{self.cached_batches} of {self.num_batches} batch(es), recomputing "
                f"{self.num_batches - self.cached_batches} in every HVP{probes}")

    # ------------------------------------------------------------------ products
    def _backward(self, graph: Sequence[torch.Tensor | None], V: torch.Tensor, retain: bool,
                  into: torch.Tensor) -> None:
        """Add to ``into`` (k, dim) the rows of V·∂g/∂θ for the per-parameter gradient tuple ``graph``
        = g; for g = ∇L this is (H V^T)^T = V H (H symmetric). Accumulating into per-parameter views
        of one buffer allocates no full-length vector (at 11 M parameters each one costs ~50 ms of
        page faults on CPU)."""
        k = V.shape[0]
        live = [(g, start, p) for g, start, p in zip(graph, self._starts, self.params)
                if g is not None and g.requires_grad]  # the others do not depend on θ: 0 rows of H
        if not live:
            return
        outputs = [g for g, _, _ in live]

        def cut(rows: torch.Tensor) -> list[torch.Tensor]:  # (..., dim) -> per-parameter (..., *shape)
            return [rows[..., s:s + p.numel()].reshape(*rows.shape[:-1], *p.shape) for _, s, p in live]

        def add(target: torch.Tensor, grads, batch: bool) -> None:
            for g, start, p in zip(grads, self._starts, self.params):
                if g is not None:  # view the target slice in g's shape: g may be strided (no copy)
                    target[..., start:start + p.numel()].view(g.shape).add_(g)

        if k > 1 and self.batched_hvp:
            try:
                out = torch.autograd.grad(outputs, self.params, grad_outputs=cut(V), retain_graph=True,
                                          allow_unused=True, is_grads_batched=True)
                add(into, out, batch=True)
                return
            except (RuntimeError, NotImplementedError) as err:  # some op lacks a vmap rule: loop instead
                warnings.warn(f"Hessian: the batched (vmap) double backward failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120]}); looping over the probes instead", stacklevel=4)
                self.batched_hvp, self._batched_why = False, "vmap failed, looping"
                self.cache_report = self._describe_cache()
        for i in range(k):
            out = torch.autograd.grad(outputs, self.params, grad_outputs=cut(V[i]),
                                      retain_graph=retain or i < k - 1, allow_unused=True)
            add(into[i], out, batch=False)

    def _local_hvp(self, V: torch.Tensor, out: torch.Tensor) -> None:
        if self._graph is not None:
            self._backward(self._graph, V, retain=True, into=out)
        if self.cached:
            return
        count = self._cached_count
        with _eval_mode(self.model):
            for i, (x, y, n) in enumerate(self._batches("Hessian: HVP", skip=self.cached_batches),
                                          start=self.cached_batches):
                with self._graph_mode():
                    loss = self._batch_loss(x, y, i)
                g = torch.autograd.grad(loss * (n / self.num_samples), self.params, create_graph=True,
                                        allow_unused=True)
                self._backward(g, V, retain=False, into=out)
                count += n
        if count != self.local_count:
            raise PrunelimitError(f"batches gave {count} samples in this pass but {self.local_count} when the "
                             "operator was built; the data must be the same on every pass (no drop_last "
                             "with shuffling, no changing dataset)")

    def matmat(self, V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """H applied to each row of ``V`` (k, dim); returns (k, dim) in V's dtype and device.

        ``out`` (k, dim): a buffer to write the result into (Lanczos passes its next basis row, so an
        HVP allocates no full-length vector); it must not overlap V."""
        if V.ndim != 2 or V.shape[1] != self.dim:
            raise PrunelimitError(f"vectors must have shape (k, {self.dim}); got {tuple(V.shape)}")
        W = V.detach().to(device=self.device, dtype=self.dtype)
        direct = (out is not None and out.shape == V.shape and out.dtype == self.dtype
                  and out.device == self.device and out.is_contiguous())  # all_reduce needs contiguous
        result = out if direct else torch.empty_like(W)
        result.zero_()
        with torch.enable_grad():
            try:
                self._local_hvp(W, result)
            except (RuntimeError, NotImplementedError) as err:
                self._retry_plain(err, W, result)
        dist.all_reduce_sum(result)
        if self._reg_graph is not None:  # added after the reduction so it counts once, not per rank
            with torch.enable_grad():
                self._backward(self._reg_graph, W, retain=True, into=result)
        self.num_matvecs += V.shape[0]
        if out is not None and not direct:
            return out.copy_(result)
        return result.to(device=V.device, dtype=V.dtype)

    def _retry_plain(self, err: BaseException, W: torch.Tensor, result: torch.Tensor) -> None:
        """An HVP failed: without lean graphs, rebuild with PyTorch's plain double backward (saying so
        once) and retry; an op with no second derivative at all is a one-line error naming it."""
        op = missing_derivative(err)
        if self.lean_graphs:
            warnings.warn(f"Hessian: the lean second-order graphs failed ({op or type(err).__name__}); "
                          f"using PyTorch's plain double backward for this model", stacklevel=3)
            self.lean_graphs = False
            self._build(self._cache_mode)
            result.zero_()
            try:
                return self._local_hvp(W, result)
            except (RuntimeError, NotImplementedError) as again:
                err, op = again, missing_derivative(again)
        if op is None:
            raise err
        raise PrunelimitError(f"the Hessian needs second derivatives, but PyTorch has no derivative for {op} "
                              f"(the backward of an op in {type(self.model).__name__}); replace that op by a "
                              f"twice-differentiable one, or pass params= without the layers before it") from None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector of length ``dim``; returned in v's dtype and device."""
        if v.ndim != 1 or v.numel() != self.dim:
            raise PrunelimitError(f"vector must be 1-D of length dim={self.dim}; got shape {tuple(v.shape)}")
        return self.matmat(v.unsqueeze(0)).squeeze(0)

    def gradient(self) -> torch.Tensor:
        """Flat full-data gradient ∇L (with the regularizer), detached, on the operator's device."""
        if self._gradient is None:
            self._gradient = self._full_gradient()
        return self._gradient.clone()

    @torch.enable_grad()
    def _full_gradient(self) -> torch.Tensor:
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        if self._graph is not None:
            g += _flat([None if t is None else t.detach() for t in self._graph], self.params)
        if not self.cached:
            with _eval_mode(self.model):
                for i, (x, y, n) in enumerate(self._batches("Hessian: gradient", skip=self.cached_batches),
                                              start=self.cached_batches):
                    grads = torch.autograd.grad(self._batch_loss(x, y, i), self.params, allow_unused=True)
                    g += _flat(grads, self.params) * (n / self.num_samples)
        dist.all_reduce_sum(g)
        if self._reg_graph is not None:
            g += _flat([None if t is None else t.detach() for t in self._reg_graph], self.params)
        return g

    def split(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector cut into per-parameter views keyed by parameter name."""
        return {n: t.view(s) for n, t, s in zip(self.param_names, v.split(self.sizes), self.shapes)}

    def offsets(self) -> dict[int, tuple[str, int]]:
        """id(parameter) -> (name, offset of its first element in the flat vector)."""
        out, start = {}, 0
        for name, p, size in zip(self.param_names, self.params, self.sizes):
            out[id(p)] = (name, start)
            start += size
        return out


class MatrixOperator:
    """An explicit symmetric matrix with the operator interface (tests, small problems, checks)."""

    def __init__(self, matrix: torch.Tensor):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise PrunelimitError(f"matrix must be square; got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype, self.device = matrix.dtype, matrix.device
        self.num_matvecs = 0

    def matmat(self, V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        self.num_matvecs += V.shape[0]
        result = (V.to(self.matrix) @ self.matrix).to(V)  # V H = (H V^T)^T, H symmetric
        return result if out is None else out.copy_(result)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.unsqueeze(0)).squeeze(0)


def apply_operator(op, V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """H V^T row-wise for any operator: its ``matmat`` if it has one, else ``matvec`` per row.

    ``out``: where to write the result; passed on to a ``matmat(V, out=...)`` that accepts it (the
    operators here do), otherwise the result is copied into it."""
    if hasattr(op, "matmat"):
        if out is not None and "out" in inspect.signature(op.matmat).parameters:
            return op.matmat(V, out=out)
        result = op.matmat(V)
    else:
        result = torch.stack([op.matvec(v) for v in V])
    return result if out is None else out.copy_(result)
