"""What the spectrum, rows and limit stages share: the Hessian operator of the declared loss and its
batches, epsilon (the loss tolerance), and the eigenvalue measure the Gaussian width integrates."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from prunelimit import dist
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline.common import Context, Data, eval_loader, say
from prunelimit.pipeline.results import SpectrumResult


def hessian_setup(ctx: Context, model: nn.Module, data: Data):
    """``(get_op, loss_fn, loader)``: a builder of the Hessian operator of the declared loss
    (``limit.loss``), that loss as ``loss_fn(output, target)`` and its batches. With
    ``spectrum.matrix: gauss_newton`` the operator is the Gauss-Newton matrix of the same loss and batches.

    ``data``: the criterion alone; the operator carries no L1 term at all (its Hessian is zero almost
    everywhere, so back-propagating it through every HVP only costs time). ``regularized``: the criterion
    plus lambda * ||theta||_1, as the original (same Hessian, and epsilon is unchanged by a constant shift)."""
    from prunelimit.spectrum import curvature_operator, resolve_budget
    from prunelimit.train import l1_penalty, make_criterion, model_loss
    from prunelimit.train.batches import ModelLoss

    cfg = ctx.cfg
    loss_fn = ctx.loss_fn if ctx.loss_fn is not None else make_criterion(cfg.train, data.num_classes)
    t = cfg.train
    regularized = cfg.limit.loss == "regularized" and t.l1_lambda > 0
    regularizer = (lambda m: t.l1_lambda * l1_penalty(m, t.l1_params)) if regularized else None
    criterion = loss_fn
    if regularized and isinstance(criterion, ModelLoss):   # the regularised per-batch loss, for epsilon
        loss_fn = model_loss(lambda m, batch: criterion(m, batch) + regularizer(model))
    elif regularized:
        def loss_fn(output, target):   # noqa: F811
            return criterion(output, target) + regularizer(model)
    limit_batches = None if cfg.data.use_full_data else 1
    loader = eval_loader(cfg, data.train_eval, t.batch_size, ctx.device, limit_batches=limit_batches,
                         evaluation=False)

    @functools.cache
    def get_op():
        # built on first use only: building caches every batch's gradient graph, which a rerun whose
        # spectrum and rows stages already finished does not need
        s = cfg.spectrum
        budget = resolve_budget(s.memory_budget, ctx.device)
        say(f"spectrum: memory budget for cached gradient graphs: {budget}")
        batches = _hessian_batches(ctx, model, criterion, data, loader, budget)
        op = curvature_operator(s.matrix, model, criterion, batches, params=s.parameters, regularizer=regularizer,
                                device=ctx.device,
                                cache_graph=s.cache_graph_arg(), memory_budget=budget, lean_graphs=s.lean_graphs,
                                batched_probes=s.batched_probes_arg(), show_progress=cfg.show_progress)
        say(op.cache_report)
        return op

    return get_op, loss_fn, loader


def coverage_text(op, parameters: str) -> str:
    """``"over 461,594 of 463,866 trainable parameters (left out: 2,272 in 31 norm layers; ...)"``: which
    parameters the operator (or the operator a ``RestrictedOperator`` restricts) differentiates, and what
    its parameter set (``spectrum.parameters``) leaves out, so a smaller D is never unexplained."""
    base = getattr(op, "op", op)
    total = getattr(base, "trainable_numel", None)
    if total is None:
        return f"over {op.dim:,} parameters"
    kept = f" kept (of {base.dim:,})" if base is not op else ""
    if not base.left_out_summary:
        return f"over {op.dim:,}{kept} parameters (every trainable one)"
    why = "; the paper's convention; spectrum.parameters=all includes them" if parameters == "prunable" else ""
    return f"over {op.dim:,}{kept} of {total:,} trainable parameters (left out: {base.left_out_summary}{why})"


SMALL_BATCH_RATIO = 4   # Hessian batches this many times below the training batch get a warning


def _hessian_batches(ctx: Context, model: nn.Module, criterion, data: Data, loader, budget):
    """The Hessian's batches: with full data, re-batched for speed (the same H, fewer and larger
    batches: ``spectrum.hessian_batch_size``, or the largest the memory budget allows, measured on one
    training batch); otherwise the one training batch the Hessian is taken on."""
    from prunelimit.spectrum import curvature_operator
    from prunelimit.spectrum.memory import format_bytes, hessian_batch_size

    cfg, s = ctx.cfg, ctx.cfg.spectrum
    if not cfg.data.use_full_data:
        return loader
    size = s.hessian_batch_size
    samples = len(data.train_eval) // dist.world_size()
    if size is None:
        probe = curvature_operator(s.matrix, model, criterion, [next(iter(loader))], params=s.parameters,
                                   device=ctx.device,
                                   memory_budget=budget, lean_graphs=s.lean_graphs)
        per_sample = (probe.graph_bytes_first - probe.gradient_bytes) / probe.local_count
        del probe
        size = hessian_batch_size(per_sample, budget.bytes, samples)
        say(f"spectrum: Hessian batches of {size} samples per process (a gradient graph takes "
            f"{format_bytes(per_sample)} per sample; epsilon keeps the training batches of {cfg.train.batch_size})")
        train_batch = cfg.train.batch_size // dist.world_size()
        if size * SMALL_BATCH_RATIO <= train_batch:
            say(f"warning: spectrum.memory_budget ({format_bytes(budget.bytes)}) forces Hessian batches of {size} "
                f"samples, {train_batch // size}x smaller than the training batch of {train_batch}: "
                f"{math.ceil(samples / size):,} batches, the uncached ones recomputed in every HVP, are far slower "
                f"than a few large ones; raise spectrum.memory_budget (e.g. '6GiB', or a fraction such as 0.5) or set "
                f"spectrum.hessian_batch_size")
    return eval_loader(cfg, data.train_eval, size * dist.world_size(), ctx.device, evaluation=False)


def loss_tolerance(ctx: Context, model: nn.Module, loss_fn, loader) -> tuple[float, str]:
    """``(epsilon, where it came from)``: ``limit.epsilon`` when a number, else the std of the per-minibatch
    training loss at w*."""
    from prunelimit.limit import loss_epsilon

    lc = ctx.cfg.limit
    if lc.epsilon != "loss_std":
        return float(lc.epsilon), "given (limit.epsilon)"
    eps, _ = loss_epsilon(model, loader, loss_fn, device=ctx.device, ddof=lc.epsilon_ddof)
    if not (math.isfinite(eps) and eps > 0):
        raise PrunelimitError(f"epsilon came out as {eps}: the per-batch training losses do not vary (one batch?). "
                              f"Set limit.epsilon to a positive number, or use more than one batch")
    return eps, f"std (ddof {lc.epsilon_ddof}) of the per-minibatch training {lc.loss} loss at w*"


def width_measure(s, spectrum: SpectrumResult) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalue measure the Gaussian width integrates: the SLQ nodes and weights themselves, or with
    ``spectrum.density_kernel: original`` the original code's binned density (variance 1e-10 on 100 000
    bins), whose underflow biases the width; offered only to reproduce the original's numbers."""
    nodes = torch.tensor(spectrum.nodes, dtype=torch.float64)
    weights = torch.tensor(spectrum.weights, dtype=torch.float64)
    if s.density_kernel != "original":
        return nodes, weights
    import warnings

    from prunelimit.spectrum.density import original_density

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-underflow case is reported below
        grid, density = original_density(nodes, weights, probes=spectrum.lanczos_num or s.lanczos_num)
    if float(density.sum()) <= 0:
        raise PrunelimitError("spectrum.density_kernel: original underflowed to zero in every bin (kernel variance "
                              "1e-10 against the bin width), so it gives no width; use density_kernel: gaussian")
    return grid, density
