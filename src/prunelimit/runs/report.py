"""The end-of-run summary: ``summary.json``, ``report.md``, and one screen on the terminal."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.limit.rules import DEFAULT_READING
from prunelimit.runs.io import atomic_write_text, read_json, write_json
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline.results import ActualLimit, LimitResult, PruneResult, RunSummary

TITLES = {"gp": "GP", "gp_mt": "GP+MT"}
RULE_CONDITIONS = {"above_baseline": "test acc > unpruned",
                   "acc_drop": "test acc drop <= {delta}",
                   "loss_increase": "train {loss} loss <= L(w*) + eps"}
LOSS_WORDS = {"data": "data loss = the criterion alone, without the L1 term",
              "regularized": "regularised loss = criterion + lambda * ||theta||_1, as the original"}


# the prediction's label when the curvature is not the Hessian's (the paper's): a Gauss-Newton
# prediction must not read like a Hessian one
MATRIX_LABELS = {"gauss_newton": ", Gauss-Newton matrix"}


def rule_title(rule: str, reading: str | None, *, delta=None, loss: str = "data") -> str:
    """The words for one rule in one reading, e.g. "largest p with test acc > unpruned (original rule)"."""
    points = "delta points" if delta is None else f"{delta:g} point" + ("" if delta == 1 else "s")
    cond = RULE_CONDITIONS.get(rule, rule).format(delta=points, loss=loss)
    text = f"largest p with {cond}" if reading == "largest_passing" else f"{cond} at every p' <= p"
    return text + (" (original rule)" if rule == "above_baseline" else "")


def _limit_lines(lim: LimitResult) -> list[str]:
    pred, loss, delta = lim.predicted, lim.loss, lim.delta
    actual = lim.actual

    def reading_of(v: ActualLimit, rule: str) -> str | None:
        # results written before readings existed: each rule was read its default way
        return v.reading or DEFAULT_READING.get(rule)

    table = [(f"predicted (Gaussian width fixed point{MATRIX_LABELS.get(lim.matrix, '')})", pred)]
    table += [(f"actual: {rule_title(rule, reading_of(v, rule), delta=delta, loss=loss)}", v)
              for rule, v in actual.items()]
    width = max(len(label) for label, _ in table)
    lines = ["", f"{'How sparse can it be pruned?':<{width + 2}}  prune fraction  keep fraction"]
    for label, v in table:
        lines.append(f"  {label:<{width}}  {_frac(v.prune_fraction):>14}  {_frac(v.keep_fraction):>13}")
    if pred.prune_fraction is None and pred.reason:
        lines.append(f"    (no prediction: {pred.reason})")
    for rule, v in actual.items():
        if v.prune_fraction is None and v.reason:
            lines.append(f"    ({rule_title(rule, reading_of(v, rule), delta=delta, loss=loss)}: no limit - {v.reason})")
    others = [f"{rule_title(rule, rd, delta=delta, loss=loss)}: "
              f"{'none' if o.prune_fraction is None else _frac(o.prune_fraction)}" for rule, v in actual.items()
              for rd, o in (v.readings or {}).items()
              if rd != v.reading and o.prune_fraction != v.prune_fraction]
    if others:
        lines.append(f"  other reading: {'; '.join(others)}")
    ddof = lim.epsilon_ddof
    lines.append(f"  eps {lim.eps or 0:.4g}" + ("" if ddof is None else f" (std, ddof {ddof}, of the per-batch "
                                                   f"train {loss} loss)")
                 + f", flat fraction q {lim.important_ev_rate or 0:.2f}")
    if lim.trace_bound_limit is not None or lim.slq_abs_trace is not None or lim.trace_bound_reason:
        from prunelimit.pipeline.limit import trace_bound_line

        lines.append(f"  {trace_bound_line(lim)}")
    lines.append(f"  loss convention: {LOSS_WORDS.get(loss, loss)}")
    return lines


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f} %"


def _frac(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _method_lines(title: str, r: PruneResult) -> list[str]:
    lines = []
    if r.groups:
        parts = [f"{g} {v.sparsity:.3f}" for g, v in list(r.groups.items())[:8]]
        more = " ..." if len(r.groups) > 8 else ""
        lines.append(f"  {title} sparsity by layer group: {', '.join(parts)}{more}")
    size = r.size_and_compute
    if size is not None:
        speed = f"theoretical speed-up {size.speedup:.2f}x, " if size.speedup else ""
        lines.append(f"  {title} size and compute: {size.nonzeros:,} of {size.params:,} parameters non-zero; "
                     f"{speed}{size.bytes_dense:,} bytes dense, {size.bytes_compressed:,} compressed")
    if r.clamped_layers:
        lines.append(f"  {title} layers clamped by the MT floor ({r.floor} weights): "
                     f"{', '.join(r.clamped_layers[:6])}{' ...' if len(r.clamped_layers) > 6 else ''}")
    return lines


def _pruned_spectrum_lines(run_dir: str | None) -> list[str]:
    """Dense and pruned-subnetwork spectra side by side, when the run took both (``spectrum.masks``)."""
    from prunelimit.pipeline.results import SpectrumResult

    folder = Path(run_dir or "") / paths.LIMIT
    if not run_dir or not (folder / paths.SPECTRUM_PRUNED_JSON).is_file() or not (folder / paths.SPECTRUM_JSON).is_file():
        return []
    lines = ["", f"Spectrum before / after pruning: {'parameters':>12} {'top eigenvalue':>15} {'trace':>11} "
                 f"{'trace / parameters':>19}"]
    for title, name in (("dense", paths.SPECTRUM_JSON), ("kept weights", paths.SPECTRUM_PRUNED_JSON)):
        r = SpectrumResult.from_json(read_json(folder / name))
        top = f"{r.top_eigenvalues[0]:.4g}" if r.top_eigenvalues else "-"
        trace, mean = ("-", "-") if r.trace is None else (f"{r.trace:.4g}", f"{r.trace / r.dim:.3g}")
        lines.append(f"  {title:<31}{r.dim:>12,} {top:>15} {trace:>11} {mean:>19}")
    return lines


def _stale_spectrum_note(s: RunSummary) -> str | None:
    """A note when the limit section was predicted from another spectrum than the run's current
    ``limit/spectrum.json`` (a later ``prunelimit spectrum`` recomputed it; the limit stage did not run)."""
    from prunelimit.pipeline.stages import file_digest

    used = s.limit.spectrum_sha256
    if not (used and s.run_dir):
        return None   # a result written before the digest was kept: nothing to compare
    current = file_digest(Path(s.run_dir) / paths.LIMIT / paths.SPECTRUM_JSON)
    if current == used:
        return None
    return ("  (from an EARLIER spectrum: limit/spectrum.json has been "
            + ("removed" if current is None else "recomputed") + " since this prediction was made; run "
            "`prunelimit limit` on this directory to predict from the current one)")


def summary_lines(s: RunSummary | Mapping) -> list[str]:
    """The printed summary, from the typed summary (or its ``summary.json`` dict)."""
    s = _typed(s)
    lines = [f"prunelimit {s.pipeline} run: {s.model} on {s.dataset or '(no dataset)'}"]
    if s.dense is not None:
        lines.append(f"  dense model ({s.dense.source}): test top-1 {_pct(s.dense.test_top1)}")
    if s.limit is not None:
        limit_lines = _limit_lines(s.limit)     # ["", header, rows ...]
        stale = _stale_spectrum_note(s)
        lines += limit_lines[:2] + ([stale] if stale else []) + limit_lines[2:]
    lines += _pruned_spectrum_lines(s.run_dir)
    gp = s.gp or {}
    if gp:
        lines.append("")
        lines.append(f"Pruning at sparsity {s.sparsity}:")
        lines.append(f"  {'method':<7} {'achieved':>9} {'before':>9} {'pruned':>9} {'fine-tuned':>11}")
        for m, r in gp.items():
            ft = r.finetune.best_top1 if r.finetune is not None else None
            lines.append(f"  {TITLES.get(m, m):<7} {r.sparsity_achieved:>9.4f} {_pct(r.pre_acc):>9} "
                         f"{_pct(r.post_prune_acc):>9} {_pct(ft):>11}")
        for m, r in gp.items():
            lines += _method_lines(TITLES.get(m, m), r)
    if s.run_dir:
        lines.append("")
        lines.append(f"Files in {s.run_dir}/:")
        top = Path(s.run_dir)
        for sub in ("", paths.DENSE, paths.LIMIT, *gp, paths.STAGES):   # "": the run directory's own files
            folder = top / sub
            names = (sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
                     if folder.is_dir() else [])
            if names:
                lines.append(f"  {sub + '/' if sub else '.'}: {', '.join(names)}")
    if s.seconds is not None:
        reused = set(s.reused_stages or ())
        seconds = dict(s.stage_seconds or {})
        parts = ", ".join([f"{k} {v:.1f}" + (" (reused)" if k in reused else "") for k, v in seconds.items()]
                          + [f"{k} reused" for k in s.reused_stages or () if k not in seconds])
        lines.append(f"Finished in {s.seconds} s" + (f" (seconds per stage: {parts})." if parts else "."))
    return lines


def _typed(s: RunSummary | Mapping) -> RunSummary:
    return s if isinstance(s, RunSummary) else RunSummary.from_json(s)


def print_summary(s: RunSummary | Mapping, *, after_progress: bool = True) -> None:
    """Print the summary; ``after_progress``: a blank line first, parting it from the stages' lines a
    command printed above it (``report`` prints the summary alone, from its first line)."""
    if dist.is_main():
        print("\n" * after_progress + "\n".join(summary_lines(s)), flush=True)


def write_summary(run_dir: str | Path, s: RunSummary | Mapping) -> None:
    if not dist.is_main():
        return
    run_dir, s = Path(run_dir), _typed(s)
    write_json(run_dir / paths.SUMMARY, s.to_json())
    atomic_write_text(run_dir / paths.REPORT, report_markdown(s))


def report_markdown(s: RunSummary | Mapping) -> str:
    s = _typed(s)
    lines = ["# prunelimit report", "", "```", *summary_lines(s), "```", ""]
    lim_dir = Path(s.run_dir or ".") / paths.LIMIT
    for name, title in ((paths.SWEEP_PNG, "Accuracy and loss versus prune fraction"),
                        (paths.WIDTH_PNG, "Gaussian width g(R(p)) and p against R"),
                        (paths.DENSITY_PNG, "Hessian spectral density (SLQ)"),
                        (paths.ROWS_PNG, "Hessian row norms at magnitude quantiles")):
        if (lim_dir / name).exists():
            lines += [f"## {title}", "", f"![{title}](limit/{name})", ""]
    return "\n".join(lines)


def report_from_dir(run_dir: str | Path) -> RunSummary:
    """The run's ``summary.json`` as a ``RunSummary`` (also one written by an older version)."""
    path = Path(run_dir) / paths.SUMMARY
    if not Path(run_dir).exists():
        raise PrunelimitError(f"run directory {str(run_dir)!r} does not exist; give the --out directory of a "
                              f"finished `prunelimit run` (runs/<config name> by default)")
    if not Path(run_dir).is_dir():
        raise PrunelimitError(f"{str(run_dir)!r} is a file, not a run directory; give the folder that holds "
                              f"its summary.json")
    if not path.exists():
        raise PrunelimitError(f"{str(run_dir)!r} has no summary.json: it is not a finished prunelimit run directory "
                         f"(run `prunelimit run ...` first, or give the --out directory of one)")
    try:
        return RunSummary.from_json(read_json(path))
    except (ValueError, TypeError, AttributeError) as e:
        raise PrunelimitError(f"{str(path)!r} is not a prunelimit summary ({e}); rerun the command that "
                              f"made it, or give another run directory") from None
