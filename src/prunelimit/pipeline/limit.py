"""How sparse can it be pruned: sweep -> spectrum -> important eigenvalues -> prediction vs actual.

Four stage units, driven by the runner (``StageRunner.drive``): ``SweepStage`` -> ``SweepResult``,
``SpectrumStage`` -> ``SpectrumResult``, ``RowsStage`` -> ``RowsResult``, ``LimitStage`` -> ``LimitResult``.
All files go to ``<run>/limit/``: ``sweep.csv``, ``spectrum.json``, ``density.csv``, ``hessian_rows.csv``,
``result.json``, ``result.txt`` and the plots. A rerun loads what is finished; an interrupted sweep
resumes from its CSV, an interrupted spectrum from its Lanczos state.
"""
from __future__ import annotations

import functools
import shutil
import warnings

import torch
from torch import nn

from prunelimit import dist
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline import stages
from prunelimit.pipeline.common import Context, Data, eval_loader, evaluator, say, timed
from prunelimit.pipeline.hessian import (coverage_text, hessian_setup, loss_tolerance,  # noqa: F401 (re-exported)
                                         width_measure)
from prunelimit.pipeline.results import LimitResult, RowsResult, SpectrumResult, SweepResult
from prunelimit.pipeline.stages import StageUnit
from prunelimit.runs import paths
from prunelimit.runs.io import read_json, write_csv, write_json
from prunelimit.spectrum.checkpoint import LanczosCheckpoint


def _ordering(ctx: Context, model: nn.Module):
    from prunelimit.limit import MagnitudeOrdering

    p = ctx.cfg.prune
    return MagnitudeOrdering.from_model(model, include=p.include, exclude=p.exclude)


class SweepStage(StageUnit):
    """One-shot pruning sweep from one magnitude ordering. ``epsilon``: a callable giving ``(eps, source)``;
    the adaptive search of the loss rule needs it."""

    def __init__(self, ctx: Context, model: nn.Module, data: Data, ordering, epsilon=None):
        self.ctx, self.model, self.data, self.ordering, self.epsilon = ctx, model, data, ordering, epsilon
        self.csv_path = ctx.run.sub(paths.LIMIT) / paths.SWEEP_CSV

    def stage(self):
        return stages.sweep_stage(self.ctx.cfg)

    def load(self, record):
        from prunelimit.limit.sweep import has_loss_columns

        result = SweepResult.from_csv(self.csv_path, name=self.ctx.run.relative(self.csv_path))
        if has_loss_columns(list(result.rows)):
            say(f"sweep: finished earlier ({self.csv_path})")
            return result
        say(f"sweep: {self.csv_path} was written before the data-loss columns existed; evaluating it again")
        return None

    def run(self):
        from prunelimit.limit import adaptive_limit_search, run_sweep
        from prunelimit.limit.sweep import SWEEP_COLUMNS, tail_grid

        ctx, cfg, data, ordering, csv_path = self.ctx, self.ctx.cfg, self.data, self.ordering, self.csv_path
        bs = cfg.train.batch_size
        test_eval = evaluator(cfg, eval_loader(cfg, data.test, bs, ctx.device), ctx.device, data.num_classes,
                              loss_fn=ctx.loss_fn)
        train_eval = (evaluator(cfg, eval_loader(cfg, data.train_eval, bs, ctx.device), ctx.device,
                                data.num_classes, loss_fn=ctx.loss_fn)
                      if cfg.limit.sweep_train else None)
        lc = cfg.limit
        if lc.adaptive:
            say(f"adaptive limit search ({lc.coarse_points} coarse points, then bisection; rule {lc.rule}, "
                f"reading {lc.reading}, loss {lc.loss})")
            eps = self.epsilon()[0] if lc.rule == "loss_increase" else None  # the rule's tolerance, known first
            _, rows = adaptive_limit_search(self.model, ordering, test_eval, lc.rule, evaluate_train=train_eval,
                                            coarse_points=lc.coarse_points, tol=1 / lc.sweep_points,
                                            delta=lc.delta, epsilon=eps, reading=lc.reading, loss=lc.loss,
                                            show_progress=cfg.show_progress)
            if dist.is_main():
                write_csv(csv_path, SWEEP_COLUMNS, [[r.get(c) for c in SWEEP_COLUMNS] for r in rows])
        else:
            grid = tail_grid(lc.sweep_points, lc.tail_points, ordering.num_weights)
            say(f"sweep: {len(grid)} prune fractions from one ordering of {ordering.num_weights:,} weights"
                + (f" (the last {len(grid) - lc.sweep_points} beyond {grid[lc.sweep_points - 1]:g}, up to "
                   f"{grid[-1]:.6g})" if len(grid) > lc.sweep_points else "")
                + (f" (resuming from {csv_path})" if csv_path.exists() else ""))
            rows = run_sweep(self.model, ordering, grid, test_eval, train_eval,
                             show_progress=cfg.show_progress, csv_path=csv_path, resume=True)
        return SweepResult(rows=tuple(rows), csv=ctx.run.relative(csv_path))   # relative: the run may move


class SpectrumStage(StageUnit):
    """SLQ spectrum, top eigenvalues and trace of the Hessian ``get_op()`` builds (on first use only)."""

    def __init__(self, ctx: Context, get_op):
        self.ctx, self.get_op = ctx, get_op
        self.out = ctx.run.sub(paths.LIMIT)

    def stage(self):
        return stages.spectrum_stage(self.ctx.cfg)

    def load(self, record):
        say("spectrum: finished earlier")
        return SpectrumResult.from_json(read_json(self.out / paths.SPECTRUM_JSON))

    def marker(self, result):
        return {"dim": result.dim, "top_eigenvalue": list(result.top_eigenvalues[:1])}

    def before_start(self):
        check_spectrum_sizes(self.ctx.cfg.spectrum, self.get_op().dim)

    def run(self):
        return compute_spectrum(self.ctx, self.get_op(), SPECTRUM_FILES)


def check_spectrum_sizes(s, dim: int) -> None:
    """Refuse Lanczos steps or top eigenvalues beyond the matrix's dimension D (known once the operator
    is built), before any Hessian-vector product: a silent clamp to D would start a D-step run (at
    D = 50 610, a 9.5 GiB basis and 50 610 HVPs) that no one asked for."""
    matrix = MATRIX_WORDS[s.matrix]
    for key, value in (("lanczos_iter", s.lanczos_iter), ("top_k", s.top_k)):
        if value > dim:
            raise PrunelimitError(f"spectrum.{key}={value} exceeds the {matrix}'s dimension D={dim:,} (it has "
                                  f"only D eigenvalues and D Lanczos steps); set spectrum.{key} to at most {dim}")


MATRIX_WORDS = {"hessian": "Hessian", "gauss_newton": "Gauss-Newton matrix"}


def top_k_steps(k: int, dim: int) -> int:
    """Lanczos steps allowed for the top ``k`` eigenvalues: the library's 100, or 3k for a large k (the
    top k Ritz values need a Krylov space well past k to converge), at most D."""
    return min(dim, max(100, 3 * k))


# (spectrum json, density csv, density figure, Lanczos state folder) of the dense spectrum
SPECTRUM_FILES = (paths.SPECTRUM_JSON, paths.DENSITY_CSV, paths.DENSITY_PNG, "lanczos_state")


def compute_spectrum(ctx: Context, op, files: tuple[str, str, str, str], what: str = "spectrum",
                     title: str = "", extra: dict | None = None) -> SpectrumResult:
    """SLQ nodes and weights, top eigenvalues and trace of ``op``, written to ``files`` under ``limit/``
    (the Lanczos state of a killed run resumes from their state folder); ``extra``: more keys for the json."""
    from prunelimit.spectrum import (hessian_trace, memory_estimate, memory_message, slq_spectrum, spectral_density,
                                     top_eigenvalues)
    from prunelimit.spectrum.density import default_sigma
    from prunelimit.spectrum.host_basis import resolve_basis_device
    from prunelimit.spectrum.plots import plot_density

    cfg, out = ctx.cfg, ctx.run.sub(paths.LIMIT)
    json_name, csv_name, png_name, state_name = files
    s = cfg.spectrum
    matrix = MATRIX_WORDS[s.matrix]
    steps = min(s.lanczos_iter, op.dim)
    if steps < s.lanczos_iter:
        say(f"{what}: lanczos_iter {s.lanczos_iter} exceeds the {matrix}'s dimension {op.dim}; using {steps}")
    # SLQ runs its probes in lock-step: the basis holds all of them (probes x steps x dim)
    say(f"{what}: {matrix} {coverage_text(op, s.parameters)}; "
        f"{memory_message(op.dim, steps, op.dtype, probes=s.lanczos_num)}")
    basis_device, why = resolve_basis_device(s.basis_device, op.device,
                                             memory_estimate(op.dim, steps, op.dtype, probes=s.lanczos_num))
    say(f"{what}: Lanczos basis {why}")
    basis = "cpu" if basis_device.type == "cpu" else "same"
    seed = cfg.seed_for(s.seed)
    state_dir = out / state_name   # resumable Lanczos (bug 17): removed once the json is written
    checkpointing = bool(s.checkpoint_every)
    saved = checkpointing and state_dir.exists()
    if saved:
        say(f"{what}: found saved Lanczos state in {state_dir}; checking it against this run's settings")
    parts = {name: ReportingCheckpoint(state_dir / name, s.checkpoint_every, restart_on_mismatch=True) if checkpointing
             else None for name in ("slq", "top")}   # each part records whether it resumed
    nodes, weights = slq_spectrum(op, steps, s.lanczos_num, seed=seed, show_progress=cfg.show_progress,
                                  checkpoint=parts["slq"], reorthogonalize=s.reorthogonalize, basis_device=basis)
    if saved:
        say_resumed(what, "SLQ", parts["slq"])
    k = min(s.top_k, op.dim)
    with warnings.catch_warnings(record=True) as unconverged:   # said in the config's words below
        warnings.simplefilter("always", RuntimeWarning)
        top = (top_eigenvalues(op, k, max_iter=top_k_steps(k, op.dim), seed=seed,
                               checkpoint=parts["top"], basis_device=basis)[0]
               if k > 0 else torch.empty(0))
    if saved and k > 0:
        say_resumed(what, "top eigenvalues", parts["top"])
    for w in unconverged:
        if "Lanczos steps" in str(w.message):
            say(f"warning: {what}: the top {k} eigenvalues did not all converge within {top_k_steps(k, op.dim)} "
                f"Lanczos steps (3 x spectrum.top_k, at least 100, at most D): the smallest of them are approximate; "
                f"a smaller spectrum.top_k converges sooner")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    trace, trace_err = hessian_trace(op, s.trace_samples, seed=seed) if s.trace_samples > 0 else (None, None)
    sigma = s.density_sigma or default_sigma(nodes)
    grid, density = spectral_density(nodes, weights, sigma=sigma, num_points=s.density_points)
    result = SpectrumResult(dim=op.dim, lanczos_iter=steps, lanczos_num=s.lanczos_num,
                            nodes=tuple(nodes.tolist()), weights=tuple(weights.tolist()),
                            top_eigenvalues=tuple(float(x) for x in top), trace=trace, trace_stderr=trace_err,
                            hvp_count=getattr(op, "num_matvecs", None),
                            extra={**({"matrix": s.matrix} if s.matrix != "hessian" else {}),
                                   **({"parameters": s.parameters} if s.parameters != "prunable" else {}),
                                   **(extra or {})})
    if dist.is_main():
        write_json(out / json_name, result.to_json())
        write_csv(out / csv_name, ["eigenvalue", "density"], zip(grid.tolist(), density.tolist()))
        plot_density(out / png_name, grid, density, nodes, weights, sigma=sigma,
                     title=f"{cfg.model.name} on {cfg.data.dataset}{title}"
                           + (" (Gauss-Newton)" if s.matrix == "gauss_newton" else ""))
        if state_dir.exists():   # the json holds it all now
            shutil.rmtree(state_dir)
    parts = []
    if result.top_eigenvalues:
        parts.append("top eigenvalues " + ", ".join(f"{x:.4g}" for x in result.top_eigenvalues))
    if trace is not None:
        parts.append(f"trace {trace:.4g} ± {trace_err:.2g}")
    say(f"{what}: {'; '.join(parts) or 'done'} ({len(result.nodes)} Ritz values)")
    return result


def say_resumed(what: str, part: str, checkpoint: "ReportingCheckpoint") -> None:
    """After the fact: whether ``part`` resumed from the saved Lanczos state or started afresh (a state
    saved under other weights, data or settings is discarded, never resumed into a wrong result)."""
    found = [steps for had_state, steps in checkpoint.outcomes if had_state]
    if not found:
        return   # nothing of this part was saved (killed before its first save, or before it began)
    if all(found):
        say(f"{what}: {part} resumed from the saved Lanczos state at step {min(found)}")
    else:
        say(f"{what}: {part} started afresh: the saved Lanczos state was made under other weights, data or "
            f"settings and was discarded")


class ReportingCheckpoint(LanczosCheckpoint):
    """A ``LanczosCheckpoint`` that records what each restore (its own and its children's: one per SLQ
    probe block) found: ``outcomes`` holds (a saved state existed, the step it resumed at, 0 when the
    state was discarded as another run's)."""

    def __init__(self, *args, outcomes: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = [] if outcomes is None else outcomes

    def child(self, name):
        return ReportingCheckpoint(self.dir / name, self.every, restart_on_mismatch=self.restart_on_mismatch,
                                   outcomes=self.outcomes)

    def restore(self, run):
        had_state = self.read_state() is not None
        resumed = super().restore(run)
        self.outcomes.append((had_state, self.resumed_from if resumed else 0))
        return resumed


class RowsStage(StageUnit):
    """Flat fraction q from Hessian rows at the magnitude quantiles (``spectrum.important_eigs``)."""

    def __init__(self, ctx: Context, model: nn.Module, get_op):
        self.ctx, self.model, self.get_op = ctx, model, get_op

    def stage(self):
        return stages.rows_stage(self.ctx.cfg)

    def load(self, record):
        return RowsResult.from_json(record)

    def run(self):
        from prunelimit.spectrum import hessian_row_norms
        from prunelimit.spectrum.plots import plot_row_norms

        cfg, out = self.ctx.cfg, self.ctx.run.sub(paths.LIMIT)
        s, p = cfg.spectrum, cfg.prune
        res = hessian_row_norms(self.get_op(), self.model, quantiles=s.row_quantiles, include=p.include,
                                exclude=p.exclude, threshold=s.row_threshold)
        if dist.is_main():
            rows = res.rows()
            write_csv(out / paths.ROWS_CSV, list(rows[0].keys()), [list(r.values()) for r in rows])
            plot_row_norms(out / paths.ROWS_PNG, res, title=f"{cfg.model.name} on {cfg.data.dataset}")
        q = float(res.flat_fraction)
        say(f"important eigenvalues: {res.flat_count} of {s.row_quantiles} sampled Hessian rows are flat "
            f"(row L1 < {s.row_threshold:g}): q = {q:.2f}")
        return RowsResult(flat_fraction=q, flat_count=res.flat_count, threshold=s.row_threshold)


class LimitStage(StageUnit):
    """Predicted limit (Gaussian width of the spectrum, q, epsilon, R(p)) against the sweep's actual ones."""

    def __init__(self, ctx: Context, ordering, sweep: SweepResult, spectrum: SpectrumResult, rows: RowsResult,
                 epsilon):
        self.ctx, self.ordering, self.sweep, self.spectrum, self.rows = ctx, ordering, sweep, spectrum, rows
        self.epsilon = epsilon
        self.out = ctx.run.sub(paths.LIMIT)

    def stage(self):
        return stages.limit_stage(self.ctx.cfg)

    def load(self, record):
        return LimitResult.from_json(read_json(self.out / paths.RESULT_JSON))

    def marker(self, result):
        return {"predicted": result.predicted.prune_fraction}

    def run(self):
        from prunelimit.limit import predict_limit, rule_limits
        from prunelimit.limit.plots import plot_sweep, plot_width
        from prunelimit.limit.results import build_result, conventions_line, write_result_files
        from prunelimit.limit.rules import LOSS_COLUMN

        cfg, out, ordering, spectrum = self.ctx.cfg, self.out, self.ordering, self.spectrum
        lc = cfg.limit
        eps, eps_source = self.epsilon()
        nodes, weights = width_measure(cfg.spectrum, spectrum)
        prediction = predict_limit(nodes, weights, eps, ordering, flat_fraction=self.rows.flat_fraction,
                                   integer_R=lc.integer_R)
        bounds = trace_bounds(cfg, spectrum, eps, ordering)
        say(trace_bound_line(bounds))
        rows = list(self.sweep.rows)
        base = rows[0]
        limits = rule_limits(rows, baseline=base["test_acc"], delta=lc.delta, epsilon=eps, loss=lc.loss)
        record = build_result(prediction, limits, rule=lc.rule, reading=lc.reading, loss=lc.loss,
                              ordering=ordering, delta=lc.delta,
                              extra={"eps_source": eps_source, "epsilon_ddof": lc.epsilon_ddof,
                                     "baseline_test_acc": base["test_acc"],
                                     "baseline_train_loss": base.get(LOSS_COLUMN[lc.loss]),
                                     "lanczos_iter": spectrum.lanczos_iter, "hessian_dim": spectrum.dim,
                                     "matrix": cfg.spectrum.matrix, "hessian_parameters": cfg.spectrum.parameters,
                                     **bounds,
                                     # which spectrum this is: a later `prunelimit spectrum` may replace it
                                     "spectrum_sha256": stages.file_digest(out / paths.SPECTRUM_JSON)})
        actual = {r: v["prune_fraction"] for r, v in record["actual"].items()}
        title = f"{cfg.model.name} on {cfg.data.dataset}: {conventions_line(record)}"  # figures say what they show
        if dist.is_main():
            write_result_files(out, record)
            plot_sweep(out / paths.SWEEP_PNG, rows, prediction, actual, conventions=title, delta=lc.delta)
            plot_width(out / paths.WIDTH_PNG, prediction, ordering, actual, conventions=title, delta=lc.delta)
        return LimitResult.from_json(record)


def trace_bounds(cfg, spectrum: SpectrumResult, eps: float, ordering) -> dict:
    """The Jensen bounds on the predicted limit (limit/trace_bound.py) as result.json records them: from
    Hutchinson's Tr H (spectrum-free; guaranteed only when H has no negative curvature, which the SLQ
    spectrum tells) and from the SLQ's own Tr|H| (always at or below the SLQ prediction)."""
    from prunelimit.limit.trace_bound import spectrum_traces, trace_bound_limit

    integer_R = cfg.limit.integer_R
    slq = spectrum_traces(spectrum.nodes, spectrum.weights, spectrum.dim)
    from_abs = trace_bound_limit(slq.abs_trace, spectrum.dim, eps, ordering, integer_R=integer_R)
    out = {"trace_hutchinson": spectrum.trace, "trace_bound_limit": None, "trace_bound_reason": None,
           "trace_bound_guaranteed": None, "slq_negative_weight": slq.negative_weight,
           "slq_abs_trace": slq.abs_trace, "abs_trace_bound_limit": from_abs.limit}
    if spectrum.trace is None:
        out["trace_bound_reason"] = "no Hutchinson trace (spectrum.trace_samples=0)"
        return out
    from_trace = trace_bound_limit(spectrum.trace, spectrum.dim, eps, ordering, integer_R=integer_R)
    out.update(trace_bound_limit=from_trace.limit, trace_bound_reason=from_trace.reason,
               trace_bound_guaranteed=from_trace.limit is not None
               and (cfg.spectrum.matrix == "gauss_newton" or slq.negative_weight == 0))   # G is PSD
    return out


def trace_bound_line(record, matrix: str | None = None) -> str:
    """The trace bound in words, from result.json's fields (``record``: a dict or a ``LimitResult``)."""
    get = record.get if isinstance(record, dict) else lambda key: getattr(record, key, None)
    symbol = "G" if (matrix or get("matrix")) == "gauss_newton" else "H"
    parts = []
    trace, limit = get("trace_hutchinson"), get("trace_bound_limit")
    if limit is not None:
        text = f"p >= {limit:.4f} from Hutchinson's Tr {symbol}" + ("" if trace is None else f" = {trace:.4g}")
        negative = get("slq_negative_weight") or 0.0
        if symbol == "G":
            text += " (G is PSD by construction: Tr G = Tr|G|)"
        elif negative > 0:
            text += (f", NOT guaranteed: the SLQ puts {negative:.1%} of its weight on negative eigenvalues (H is "
                     f"indefinite, Tr H < Tr|H|)")
        else:
            text += " (the SLQ shows no negative eigenvalue, so Tr H = Tr|H|)"
        parts.append(text)
    elif get("trace_bound_reason"):
        parts.append(get("trace_bound_reason"))
    if get("slq_abs_trace") is not None:
        abs_limit = get("abs_trace_bound_limit")
        parts.append(f"from the SLQ's Tr|{symbol}| = {get('slq_abs_trace'):.4g}: "
                     + ("no bound" if abs_limit is None else f"p >= {abs_limit:.4f}"))
    return "trace bound (Jensen, derived in this project, not the paper; a lower bound on the prediction given Tr|H|): " + "; ".join(parts)


def run_limit(ctx: Context, model: nn.Module, data: Data) -> LimitResult | None:
    """Run the enabled limit stages; returns the limit's result (None when the limit stage is off)."""
    st, runner = ctx.cfg.stages, ctx.runner
    ordering = _ordering(ctx, model)
    hessian = functools.cache(lambda: hessian_setup(ctx, model, data))  # (get_op, loss_fn, loader), built once

    @functools.cache
    def epsilon():
        _, loss_fn, loader = hessian()
        return loss_tolerance(ctx, model, loss_fn, loader)

    with timed(ctx, "sweep"):
        sweep = runner.drive(SweepStage(ctx, model, data, ordering, epsilon)) if st.sweep else None
    if not (st.spectrum or st.limit):
        return None
    get_op = hessian()[0]
    pruned = None
    if ctx.cfg.spectrum.masks and st.spectrum:   # the same spectrum of the pruned subnetwork, masks read now
        from prunelimit.pipeline.pruned_spectrum import PrunedSpectrumStage

        pruned = PrunedSpectrumStage(ctx, model, data)
    elif ctx.cfg.spectrum.masks:
        say("spectrum.masks is set but stages.spectrum is off: no pruned-subnetwork spectrum (run "
            "`prunelimit spectrum` for it)")
    with timed(ctx, "spectrum"):
        spectrum = runner.drive(SpectrumStage(ctx, get_op))
    if pruned is not None:
        pruned.dense = spectrum
        with timed(ctx, "spectrum_pruned"):
            runner.drive(pruned)
    with timed(ctx, "rows"):
        rows = runner.drive(RowsStage(ctx, model, get_op)) if ctx.cfg.spectrum.important_eigs else RowsResult()
    if not st.limit:
        return None
    if sweep is None:
        raise PrunelimitError("stages.limit needs the sweep (stages.sweep / original key sparse: true) for the actual "
                              "limit and R(p)")
    with timed(ctx, "limit"):
        return runner.drive(LimitStage(ctx, ordering, sweep, spectrum, rows, epsilon))
