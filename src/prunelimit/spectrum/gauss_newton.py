"""The generalised Gauss-Newton matrix G = Jᵀ H_out J: a PSD stand-in for the Hessian at half the memory.

For the mean loss L = (1/N) Σ_b n_b · loss_b(f(x_b; θ)) the Hessian splits into

    H = (1/N) Σ_b J_bᵀ H_b J_b  +  (1/N) Σ_b Σ_o (∂(n_b loss_b)/∂z_o) ∂²z_o/∂θ²

with z = f(x_b; θ) the batch's outputs (logits), J_b = ∂z/∂θ and H_b = ∂²(n_b loss_b)/∂z² the Hessian of
the loss in the outputs. G keeps the first term. For a loss convex in the outputs (cross-entropy,
MSE) H_b ⪰ 0, so G ⪰ 0: every eigenvalue is >= 0. At a minimum where the model fits the data the
second term vanishes and G = H; elsewhere they differ.

An HVP needs no second-order graph of the network: G v = Jᵀ (H_b (J v)) per batch, with
- J v by the double-vjp trick: with a dummy u of z's shape, Jᵀu = ∂(z·u)/∂θ is linear in u, so
  J v = ∂(Jᵀu · v)/∂u (one backward with ``create_graph`` through the cached forward, one back through it);
- H_b (J v) by autograd on the loss as a function of the detached outputs (any loss; the graph is the
  size of the logits, not of the network);
- Jᵀ w by one ordinary backward through the cached forward.
So a cached batch holds only its forward graph (the activations of one backward), where the Hessian's
cache holds the graph of the gradient as well: about half the memory. The cost per HVP is three
backward-sized passes against the Hessian's one double backward.

``GaussNewtonOperator`` takes the same arguments as ``HessianOperator`` (batches, memory budget,
``cache_graph``, DDP, regularizer) and has its interface, so SLQ, top-k, the trace, Hessian rows,
``RestrictedOperator`` and the limit prediction run on it unchanged. A ``regularizer`` adds its exact
Hessian (zero almost everywhere for the L1 term; λI for an L2 term), as in ``HessianOperator``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterable

import torch
from torch import nn

from prunelimit import dist
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum.memory import GraphMeter, format_bytes
from prunelimit.spectrum.operator import HessianOperator, _eval_mode, _flat
from prunelimit.spectrum.second_order import missing_derivative, second_order_forward
from prunelimit.train.batches import ModelLoss, call_model

MATRICES = ("hessian", "gauss_newton")


def _float_leaves(obj, leaves: list[torch.Tensor]) -> Callable:
    """Collect into ``leaves`` the floating-point tensors of a model output that carry a graph (the output
    itself, or inside a tuple / list / dict / transformers ModelOutput); returns ``build(iterator)``, which
    makes the same structure with the next tensors of ``iterator`` in their places."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.requires_grad:
            leaves.append(obj)
            return lambda it: next(it)
        return lambda it: obj
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        parts = [_float_leaves(obj[k], leaves) for k in keys]

        def build_mapping(it):
            values = {k: part(it) for k, part in zip(keys, parts)}
            try:
                return type(obj)(**values)     # dict, OrderedDict, ModelOutput
            except TypeError:
                return dict(values)
        return build_mapping
    if isinstance(obj, (tuple, list)):
        parts = [_float_leaves(v, leaves) for v in obj]

        def build_sequence(it):
            items = [part(it) for part in parts]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)   # namedtuple or not
        return build_sequence
    return lambda it: obj


class _BatchCurvature:
    """One batch's forward graph and the loss's curvature in its outputs.

    ``outputs``: the output tensors the loss reads (each (B, ...)), carrying the network's graph;
    ``leaves``: detached copies that require grad, and ``output_grads`` = ∂(n_b loss_b)/∂leaves built with
    ``create_graph``, so ∂(Σ output_grad · w)/∂leaves = H_b w. An output_grad without a graph of its own
    (the loss is linear in that output) contributes no curvature."""

    def __init__(self, outputs: list[torch.Tensor], leaves: list[torch.Tensor], output_grads: list[torch.Tensor]):
        self.outputs, self.leaves, self.output_grads = outputs, leaves, output_grads
        self.curved = [i for i, g in enumerate(output_grads) if g.requires_grad]

    def output_hvp(self, ws: list[torch.Tensor]) -> list[torch.Tensor]:
        """H_b applied to the per-output vectors ``ws``."""
        if not self.curved:
            return [torch.zeros_like(w) for w in ws]
        res = torch.autograd.grad([self.output_grads[i] for i in self.curved], self.leaves,
                                  grad_outputs=[ws[i] for i in self.curved], retain_graph=True, allow_unused=True)
        return [torch.zeros_like(w) if r is None else r for r, w in zip(res, ws)]


class GaussNewtonOperator(HessianOperator):
    """G = (1/N) Σ_b J_bᵀ H_b J_b (+ the regularizer's Hessian) over ``batches``; see the module docstring.

    Arguments as ``HessianOperator``; ``loss_fn(output, target)`` takes the model's raw output, and z is
    every floating-point tensor in it that the loss reads (a ``pl.model_loss`` function of the whole batch
    hides the outputs, so it is refused)."""

    curvature = "gauss_newton"   # which matrix (checkpoints tell it from the Hessian by this)
    lean_graphs = False  # the lean graphs drop parts of the gradient's graph; G never builds that graph

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: Iterable, *,
                 lean_graphs: bool | None = None, batched_probes: bool | str = "auto", **kwargs):
        """``kwargs``: HessianOperator's (params, regularizer, device, cache_graph, memory_budget, ...).
        ``batched_probes``: only "auto" or False: the product loops over the probes (each one's J v, H_out
        and Jᵀ pass), so there is no vmap'd path to choose."""
        if isinstance(loss_fn, ModelLoss):
            raise PrunelimitError("the Gauss-Newton matrix needs the model's outputs apart from the loss, but "
                                  "loss_fn is a pl.model_loss function of the whole batch; pass "
                                  "loss_fn(output, target), or use the Hessian (matrix='hessian')")
        if lean_graphs:
            raise PrunelimitError("lean_graphs=True applies to the Hessian's gradient graphs; the Gauss-Newton "
                                  "operator builds none — leave lean_graphs unset")
        if batched_probes not in ("auto", False, "false"):
            raise PrunelimitError(f"batched_probes={batched_probes!r} applies to the Hessian's double backward; the "
                                  "Gauss-Newton product always loops over the probes — leave batched_probes unset")
        super().__init__(model, loss_fn, batches, lean_graphs=False, batched_probes=False, **kwargs)

    # ------------------------------------------------------------------ construction
    def _curvature(self, inputs, targets, n: int, i: int) -> tuple[_BatchCurvature, torch.Tensor]:
        """Forward one batch with its graph; returns its curvature record and its mean loss."""
        with second_order_forward(False):  # math attention, twice-differentiable hardsigmoid: J v
            output = call_model(self.model, inputs)    # differentiates the backward w.r.t. its input
        found: list[torch.Tensor] = []
        build = _float_leaves(output, found)
        if not found:
            raise PrunelimitError(f"the Gauss-Newton matrix needs the model's outputs as floating-point tensors "
                                  f"that depend on the parameters; {type(self.model).__name__} returned "
                                  f"{type(output).__name__} for batch {i} with none. Use the Hessian "
                                  f"(matrix='hessian')")
        detached = [t.detach().requires_grad_(True) for t in found]
        loss = self.loss_fn(build(iter(detached)), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PrunelimitError(f"loss_fn must return the batch's mean loss as a scalar tensor; batch {i} "
                                  f"gave {type(loss).__name__} of shape {getattr(loss, 'shape', None)}")
        loss = loss.reshape(())
        grads = (torch.autograd.grad(loss * n, detached, create_graph=True, allow_unused=True)
                 if loss.requires_grad else [None] * len(detached))
        read = [k for k, g in enumerate(grads) if g is not None]   # outputs the loss reads (logits, not caches)
        record = _BatchCurvature([found[k] for k in read], [detached[k] for k in read], [grads[k] for k in read])
        return record, loss.detach()

    def _build(self, cache_graph: bool | str) -> None:
        """One pass over the data: count samples, check the loss, and cache the forward graphs of as
        many batches as the memory budget allows (all, some or none)."""
        self._records: list[_BatchCurvature] = []
        count, loss_sum, bad_batch, sizes = 0, torch.zeros((), dtype=torch.float64), -1, []
        plan = 0 if cache_graph is False else None   # batches to cache (None: until batch 0 is measured)
        self.graph_bytes_first, self.gradient_bytes = None, 0   # no first-order gradients are kept
        desc = "Gauss-Newton: caching forward graphs" if cache_graph is not False else "Gauss-Newton: checking loss"
        with _eval_mode(self.model):
            for i, (x, y, n) in enumerate(self._batches(desc)):
                if plan is None or i < plan:
                    meter = GraphMeter(self.params, self.device)
                    with meter:
                        record, loss = self._curvature(x, y, n, i)
                        meter.add(record.output_grads)
                    if plan is None:
                        self.graph_bytes_first = meter.bytes
                        plan = self._plan_cache(cache_graph, meter.bytes)
                    if i < plan:
                        self._records.append(record)
                    del record
                else:
                    with torch.no_grad():
                        loss = self._batch_loss(x, y, i)
                if not torch.isfinite(loss).item() and bad_batch < 0:
                    bad_batch = i
                loss_sum += loss.double().cpu() * n
                count += n
                sizes.append(n)
        self._settle_batches(count, loss_sum, bad_batch, sizes, plan)
        self._graph = None   # HessianOperator's gradient graph: not built here
        self.cache_report = self._describe_cache()
        self._build_regularizer()
        self._gradient = None

    def _describe_cache(self) -> str:
        if self.budget is None:
            return f"Gauss-Newton: {self.num_batches} batch(es) recomputed in every HVP (cache_graph=false)"
        return (f"Gauss-Newton: memory budget {self.budget}; forward graph of batch 0 = "
                f"{format_bytes(self.graph_bytes_first or 0)}; caching {self.cached_batches} of {self.num_batches} "
                f"batch(es), recomputing {self.num_batches - self.cached_batches} in every HVP")

    # ------------------------------------------------------------------ products
    def _batch_product(self, record: _BatchCurvature, V: torch.Tensor, into: torch.Tensor, keep: bool) -> None:
        """Add (1/N) Jᵀ H_b J v for every row v of V (k, dim) to ``into``; ``keep``: the forward graph
        stays for later HVPs (a cached batch)."""
        outputs = record.outputs
        if not outputs:   # the loss reads no output that depends on the parameters
            return
        # Jᵀu with its graph, linear in the dummies u: differentiating it w.r.t. u applies J
        us = [torch.zeros_like(o, requires_grad=True) for o in outputs]
        jtu = torch.autograd.grad(outputs, self.params, grad_outputs=us, create_graph=True, allow_unused=True)
        live = [(t, s, p) for t, s, p in zip(jtu, self._starts, self.params) if t is not None and t.requires_grad]
        k = V.shape[0]
        for r in range(k):
            jv = [torch.zeros_like(o) for o in outputs]
            if live:
                pieces = [V[r, s:s + p.numel()].view(p.shape) for _, s, p in live]
                got = torch.autograd.grad([t for t, _, _ in live], us, grad_outputs=pieces, retain_graph=True,
                                          allow_unused=True)
                jv = [z if g is None else g.detach() for g, z in zip(got, jv)]
            ws = [(w / self.num_samples).to(o.dtype) for w, o in zip(record.output_hvp(jv), outputs)]
            back = torch.autograd.grad(outputs, self.params, grad_outputs=ws, retain_graph=keep or r < k - 1,
                                       allow_unused=True)
            for g, s, p in zip(back, self._starts, self.params):
                if g is not None:
                    into[r, s:s + p.numel()].view(g.shape).add_(g)

    def _local_hvp(self, V: torch.Tensor, out: torch.Tensor) -> None:
        for record in self._records:
            self._batch_product(record, V, out, keep=True)
        if self.cached:
            return
        count = self._cached_count
        with _eval_mode(self.model):
            for i, (x, y, n) in enumerate(self._batches("Gauss-Newton: HVP", skip=self.cached_batches),
                                          start=self.cached_batches):
                record, _ = self._curvature(x, y, n, i)
                self._batch_product(record, V, out, keep=False)
                count += n
        if count != self.local_count:
            raise PrunelimitError(f"batches gave {count} samples in this pass but {self.local_count} when the "
                                  "operator was built; the data must be the same on every pass (no drop_last "
                                  "with shuffling, no changing dataset)")

    def _retry_plain(self, err: BaseException, W: torch.Tensor, result: torch.Tensor) -> None:
        op = missing_derivative(err)
        if op is None:
            raise err
        raise PrunelimitError(f"the Gauss-Newton product J v differentiates the network's backward, but PyTorch "
                              f"has no derivative for {op} (in {type(self.model).__name__}); replace that op, or "
                              f"pass params= without the layers before it") from None

    @torch.enable_grad()
    def _full_gradient(self) -> torch.Tensor:
        """∇L = (1/N) Σ_b J_bᵀ ∂(n_b loss_b)/∂z (+ the regularizer's gradient), through the cached forwards."""
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        records = iter(self._records)
        with _eval_mode(self.model):
            for i, (x, y, n) in enumerate(self._batches("Gauss-Newton: gradient")):
                record = next(records, None) if i < self.cached_batches else None
                if record is None:
                    record, _ = self._curvature(x, y, n, i)
                if not record.outputs:
                    continue
                grads = torch.autograd.grad(record.outputs, self.params,
                                            grad_outputs=[og.detach() / self.num_samples for og in record.output_grads],
                                            retain_graph=i < self.cached_batches, allow_unused=True)
                g += _flat(grads, self.params)
        dist.all_reduce_sum(g)
        if self._reg_graph is not None:
            g += _flat([None if t is None else t.detach() for t in self._reg_graph], self.params)
        return g


def curvature_operator(matrix: str, model: nn.Module, loss_fn: Callable, batches: Iterable, **kwargs):
    """``HessianOperator`` (matrix='hessian') or ``GaussNewtonOperator`` (matrix='gauss_newton'), same
    arguments (``lean_graphs`` is dropped for Gauss-Newton, which builds no gradient graph)."""
    if matrix == "hessian":
        return HessianOperator(model, loss_fn, batches, **kwargs)
    if matrix == "gauss_newton":
        kwargs.pop("lean_graphs", None)
        return GaussNewtonOperator(model, loss_fn, batches, **kwargs)
    raise PrunelimitError(f"matrix={matrix!r} is not one of {MATRICES}")
