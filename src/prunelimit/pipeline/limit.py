"""How sparse can it be pruned: sweep -> spectrum -> important eigenvalues -> prediction vs actual.

All files go to ``<run>/limit/``: ``sweep.csv``, ``spectrum.json``, ``density.csv``,
``hessian_rows.csv``, ``result.json``, ``result.txt`` and the plots. Each stage records a marker, so a
rerun skips what is finished; an interrupted sweep resumes from its CSV.
"""
from __future__ import annotations

import functools
import math
import shutil

import torch
from torch import nn

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.pipeline import stages
from prunelimit.pipeline.common import Context, Data, eval_loader, evaluator, say, timed
from prunelimit.runs.io import read_json, write_csv, write_json
from prunelimit.errors import PrunelimitError


def _ordering(ctx: Context, model: nn.Module):
    from prunelimit.limit import MagnitudeOrdering

    p = ctx.cfg.prune
    return MagnitudeOrdering.from_model(model, include=p.include, exclude=p.exclude)


def sweep_stage(ctx: Context, model: nn.Module, data: Data, ordering, epsilon=None) -> list[dict]:
    """``epsilon``: a callable giving ``(eps, source)``; the adaptive search of the loss rule needs it."""
    from prunelimit.limit import adaptive_limit_search, run_sweep
    from prunelimit.limit.sweep import tail_grid

    cfg, out = ctx.cfg, ctx.run.sub(paths.LIMIT)
    csv_path = out / paths.SWEEP_CSV
    stage = stages.sweep_stage(cfg)
    if ctx.runner.check(stage) is not None:
        from prunelimit.limit.sweep import has_loss_columns, read_sweep_csv

        rows = read_sweep_csv(csv_path)
        if has_loss_columns(rows):
            say(f"sweep: finished earlier ({csv_path})")
            return rows
        say(f"sweep: {csv_path} was written before the data-loss columns existed; evaluating it again")
    ctx.runner.start(stage)
    bs = cfg.train.batch_size
    test_eval = evaluator(cfg, eval_loader(cfg, data.test, bs, ctx.device), ctx.device, data.num_classes,
                          loss_fn=ctx.loss_fn)
    train_eval = (evaluator(cfg, eval_loader(cfg, data.train_eval, bs, ctx.device), ctx.device, data.num_classes,
                            loss_fn=ctx.loss_fn)
                  if cfg.limit.sweep_train else None)
    lc = cfg.limit
    if lc.adaptive:
        say(f"adaptive limit search ({lc.coarse_points} coarse points, then bisection; rule {lc.rule}, "
            f"reading {lc.reading}, loss {lc.loss})")
        eps = epsilon()[0] if lc.rule == "loss_increase" else None  # the rule's tolerance, known before the search
        _, rows = adaptive_limit_search(model, ordering, test_eval, lc.rule, evaluate_train=train_eval,
                                        coarse_points=lc.coarse_points, tol=1 / lc.sweep_points,
                                        delta=lc.delta, epsilon=eps, reading=lc.reading, loss=lc.loss,
                                        show_progress=cfg.show_progress)
        if dist.is_main():
            from prunelimit.limit.sweep import SWEEP_COLUMNS

            write_csv(csv_path, SWEEP_COLUMNS, [[r.get(c) for c in SWEEP_COLUMNS] for r in rows])
    else:
        grid = tail_grid(lc.sweep_points, lc.tail_points, ordering.num_weights)
        say(f"sweep: {len(grid)} prune fractions from one ordering of {ordering.num_weights:,} weights"
            + (f" (the last {len(grid) - lc.sweep_points} beyond {grid[lc.sweep_points - 1]:g}, up to "
               f"{grid[-1]:.6g})" if len(grid) > lc.sweep_points else "")
            + (f" (resuming from {csv_path})" if csv_path.exists() else ""))
        rows = run_sweep(model, ordering, grid, test_eval, train_eval,
                         show_progress=cfg.show_progress, csv_path=csv_path, resume=True)
    ctx.runner.done(stage, {"rows": len(rows), "csv": str(csv_path)})
    return rows


def hessian_setup(ctx: Context, model: nn.Module, data: Data):
    """``(get_op, loss_fn, loader)``: a builder of the Hessian operator of the declared loss
    (``limit.loss``), that loss as ``loss_fn(output, target)`` and its batches.

    ``data``: the criterion alone; the operator carries no L1 term at all (its Hessian is zero almost
    everywhere, so back-propagating it through every HVP only costs time). ``regularized``: the criterion
    plus lambda * ||theta||_1, as the original (same Hessian, and epsilon is unchanged by a constant shift)."""
    from prunelimit.spectrum import HessianOperator, resolve_budget
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
        op = HessianOperator(model, criterion, batches, regularizer=regularizer, device=ctx.device,
                             cache_graph=s.cache_graph_arg(), memory_budget=budget, lean_graphs=s.lean_graphs,
                             show_progress=cfg.show_progress)
        say(op.cache_report)
        return op

    return get_op, loss_fn, loader


def _hessian_batches(ctx: Context, model: nn.Module, criterion, data: Data, loader, budget):
    """The Hessian's batches: with full data, re-batched for speed (the same H, fewer and larger
    batches: ``spectrum.hessian_batch_size``, or the largest the memory budget allows, measured on one
    training batch); otherwise the one training batch the Hessian is taken on."""
    from prunelimit.spectrum import HessianOperator
    from prunelimit.spectrum.memory import format_bytes, hessian_batch_size

    cfg, s = ctx.cfg, ctx.cfg.spectrum
    if not cfg.data.use_full_data:
        return loader
    size = s.hessian_batch_size
    samples = len(data.train_eval) // dist.world_size()
    if size is None:
        probe = HessianOperator(model, criterion, [next(iter(loader))], device=ctx.device, memory_budget=budget,
                                lean_graphs=s.lean_graphs)
        per_sample = (probe.graph_bytes_first - probe.gradient_bytes) / probe.local_count
        del probe
        size = hessian_batch_size(per_sample, budget.bytes, samples)
        say(f"spectrum: Hessian batches of {size} samples per process (a gradient graph takes "
            f"{format_bytes(per_sample)} per sample; epsilon keeps the training batches of {cfg.train.batch_size})")
    return eval_loader(cfg, data.train_eval, size * dist.world_size(), ctx.device, evaluation=False)


def spectrum_stage(ctx: Context, model: nn.Module, data: Data, get_op) -> dict:
    from prunelimit.spectrum import hessian_trace, memory_message, slq_spectrum, spectral_density, top_eigenvalues
    from prunelimit.spectrum.checkpoint import LanczosCheckpoint
    from prunelimit.spectrum.density import default_sigma
    from prunelimit.spectrum.plots import plot_density

    cfg, out = ctx.cfg, ctx.run.sub(paths.LIMIT)
    stage = stages.spectrum_stage(cfg)
    if ctx.runner.check(stage) is not None:
        say("spectrum: finished earlier")
        return read_json(out / paths.SPECTRUM_JSON)
    ctx.runner.start(stage)
    op = get_op()
    s = cfg.spectrum
    steps = min(s.lanczos_iter, op.dim)
    if steps < s.lanczos_iter:
        say(f"spectrum: lanczos_iter {s.lanczos_iter} exceeds the Hessian dimension {op.dim}; using {steps}")
    say(f"spectrum: Hessian over {op.dim:,} parameters; {memory_message(op.dim, steps, op.dtype, probes=1)}")
    seed = cfg.seed_for(s.seed)
    state_dir = out / "lanczos_state"   # resumable Lanczos (bug 17): removed once spectrum.json is written
    ckpt = LanczosCheckpoint(state_dir, s.checkpoint_every, restart_on_mismatch=True) if s.checkpoint_every else None
    if ckpt is not None and state_dir.exists():
        say(f"spectrum: resuming the Lanczos state saved in {state_dir} (a different run's state is discarded)")
    nodes, weights = slq_spectrum(op, steps, s.lanczos_num, seed=seed, show_progress=cfg.show_progress,
                                  checkpoint=ckpt.child("slq") if ckpt else None, reorthogonalize=s.reorthogonalize)
    k = min(s.top_k, op.dim)
    top = (top_eigenvalues(op, k, seed=seed, checkpoint=ckpt.child("top") if ckpt else None)[0]
           if k > 0 else torch.empty(0))
    trace, trace_err = hessian_trace(op, s.trace_samples, seed=seed) if s.trace_samples > 0 else (None, None)
    sigma = s.density_sigma or default_sigma(nodes)
    grid, density = spectral_density(nodes, weights, sigma=sigma, num_points=s.density_points)
    result = {"dim": op.dim, "lanczos_iter": steps, "lanczos_num": s.lanczos_num,
              "nodes": nodes.tolist(), "weights": weights.tolist(),
              "top_eigenvalues": [float(x) for x in top], "trace": trace, "trace_stderr": trace_err,
              "hvp_count": getattr(op, "num_matvecs", None)}
    if dist.is_main():
        write_json(out / paths.SPECTRUM_JSON, result)
        write_csv(out / paths.DENSITY_CSV, ["eigenvalue", "density"], zip(grid.tolist(), density.tolist()))
        plot_density(out / paths.DENSITY_PNG, grid, density, nodes, weights, sigma=sigma,
                     title=f"{cfg.model.name} on {cfg.data.dataset}")
    ctx.runner.done(stage, {"dim": op.dim, "top_eigenvalue": result["top_eigenvalues"][:1]})
    if dist.is_main() and state_dir.exists():
        shutil.rmtree(state_dir)
    parts = []
    if result["top_eigenvalues"]:
        parts.append("top eigenvalues " + ", ".join(f"{x:.4g}" for x in result["top_eigenvalues"]))
    if trace is not None:
        parts.append(f"trace {trace:.4g} ± {trace_err:.2g}")
    say(f"spectrum: {'; '.join(parts) or 'done'} ({len(result['nodes'])} Ritz values)")
    return result


def rows_stage(ctx: Context, model: nn.Module, get_op) -> float:
    """Flat fraction q from Hessian rows at the magnitude quantiles (0 when not configured)."""
    from prunelimit.spectrum import hessian_row_norms
    from prunelimit.spectrum.plots import plot_row_norms

    cfg, out = ctx.cfg, ctx.run.sub(paths.LIMIT)
    s = cfg.spectrum
    if not s.important_eigs:
        return 0.0
    stage = stages.rows_stage(cfg)
    done = ctx.runner.check(stage)
    if done is not None:
        return float(done["flat_fraction"])
    ctx.runner.start(stage)
    p = cfg.prune
    res = hessian_row_norms(get_op(), model, quantiles=s.row_quantiles, include=p.include, exclude=p.exclude,
                            threshold=s.row_threshold)
    if dist.is_main():
        rows = res.rows()
        write_csv(out / paths.ROWS_CSV, list(rows[0].keys()), [list(r.values()) for r in rows])
        plot_row_norms(out / paths.ROWS_PNG, res)
    q = float(res.flat_fraction)
    ctx.runner.done(stage, {"flat_fraction": q, "flat_count": res.flat_count, "threshold": s.row_threshold})
    say(f"important eigenvalues: {res.flat_count} of {s.row_quantiles} sampled Hessian rows are flat "
        f"(row L1 < {s.row_threshold:g}): q = {q:.2f}")
    return q


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


def width_measure(s, spectrum: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalue measure the Gaussian width integrates: the SLQ nodes and weights themselves, or with
    ``spectrum.density_kernel: original`` the original code's binned density (variance 1e-10 on 100 000
    bins), whose underflow biases the width; offered only to reproduce the original's numbers."""
    nodes = torch.tensor(spectrum["nodes"], dtype=torch.float64)
    weights = torch.tensor(spectrum["weights"], dtype=torch.float64)
    if s.density_kernel != "original":
        return nodes, weights
    import warnings

    from prunelimit.spectrum.density import original_density

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-underflow case is reported below
        grid, density = original_density(nodes, weights, probes=spectrum.get("lanczos_num", s.lanczos_num))
    if float(density.sum()) <= 0:
        raise PrunelimitError("spectrum.density_kernel: original underflowed to zero in every bin (kernel variance "
                              "1e-10 against the bin width), so it gives no width; use density_kernel: gaussian")
    return grid, density


def limit_stage(ctx: Context, model: nn.Module, data: Data, ordering, rows: list[dict], spectrum: dict,
                q: float, loss_fn, loader) -> dict:
    from prunelimit.limit import predict_limit, rule_limits
    from prunelimit.limit.trace_bound import trace_bound_limit
    from prunelimit.limit.plots import plot_sweep, plot_width
    from prunelimit.limit.results import build_result, conventions_line, write_result_files
    from prunelimit.limit.rules import LOSS_COLUMN

    cfg, out = ctx.cfg, ctx.run.sub(paths.LIMIT)
    stage = stages.limit_stage(cfg)
    if ctx.runner.check(stage) is not None:
        return read_json(out / paths.RESULT_JSON)
    ctx.runner.start(stage)
    lc = cfg.limit
    eps, eps_source = loss_tolerance(ctx, model, loss_fn, loader)
    nodes, weights = width_measure(cfg.spectrum, spectrum)
    prediction = predict_limit(nodes, weights, eps, ordering, flat_fraction=q, integer_R=lc.integer_R)
    bound = None
    if spectrum.get("trace") is not None:   # spectrum-free lower bound from Tr H (limit/trace_bound.py)
        bound = trace_bound_limit(spectrum["trace"], spectrum["dim"], eps, ordering, integer_R=lc.integer_R)
        say("trace bound (Jensen, derived in this project, not the paper; a lower bound on the predicted "
            "limit when H is PSD): " + (f"p >= {bound.limit:.4f}" if bound.limit is not None else bound.reason))
    base = rows[0]
    limits = rule_limits(rows, baseline=base["test_acc"], delta=lc.delta, epsilon=eps, loss=lc.loss)
    result = build_result(prediction, limits, rule=lc.rule, reading=lc.reading, loss=lc.loss, ordering=ordering,
                          delta=lc.delta,
                          extra={"eps_source": eps_source, "epsilon_ddof": lc.epsilon_ddof,
                                 "baseline_test_acc": base["test_acc"],
                                 "baseline_train_loss": base.get(LOSS_COLUMN[lc.loss]),
                                 "lanczos_iter": spectrum["lanczos_iter"], "hessian_dim": spectrum["dim"],
                                 "trace_bound_limit": None if bound is None else bound.limit,
                                 "trace_bound_reason": None if bound is None else bound.reason})
    actual = {r: v["prune_fraction"] for r, v in result["actual"].items()}
    title = f"{cfg.model.name} on {cfg.data.dataset}: {conventions_line(result)}"  # figures say what they show
    if dist.is_main():
        write_result_files(out, result)
        plot_sweep(out / paths.SWEEP_PNG, rows, prediction, actual, conventions=title)
        plot_width(out / paths.WIDTH_PNG, prediction, ordering, conventions=title)
    ctx.runner.done(stage, {"predicted": prediction.limit})
    return result


def run_limit(ctx: Context, model: nn.Module, data: Data) -> dict | None:
    """Run the enabled limit stages; returns the result dict (None when the limit stage is off)."""
    st = ctx.cfg.stages
    ordering = _ordering(ctx, model)
    hessian = functools.cache(lambda: hessian_setup(ctx, model, data))  # (get_op, loss_fn, loader), built once

    @functools.cache
    def epsilon():
        _, loss_fn, loader = hessian()
        return loss_tolerance(ctx, model, loss_fn, loader)

    with timed(ctx, "sweep"):
        rows = sweep_stage(ctx, model, data, ordering, epsilon) if st.sweep else None
    if not (st.spectrum or st.limit):
        return None
    get_op, loss_fn, loader = hessian()
    with timed(ctx, "spectrum"):
        spectrum = spectrum_stage(ctx, model, data, get_op)
    with timed(ctx, "rows"):
        q = rows_stage(ctx, model, get_op)
    if not st.limit:
        return None
    if rows is None:
        raise PrunelimitError("stages.limit needs the sweep (stages.sweep / original key sparse: true) for the actual "
                         "limit and R(p)")
    with timed(ctx, "limit"):
        return limit_stage(ctx, model, data, ordering, rows, spectrum, q, loss_fn, loader)
