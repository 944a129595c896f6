"""The end-of-run summary: ``summary.json``, ``report.md``, and one screen on the terminal."""
from __future__ import annotations

from pathlib import Path

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.limit.rules import DEFAULT_READING
from prunelimit.runs.io import atomic_write_text, read_json, write_json
from prunelimit.errors import PrunelimitError

TITLES = {"gp": "GP", "gp_mt": "GP+MT"}
RULE_CONDITIONS = {"above_baseline": "test acc > unpruned",
                   "acc_drop": "test acc drop <= {delta}",
                   "loss_increase": "train {loss} loss <= L(w*) + eps"}
LOSS_WORDS = {"data": "data loss = the criterion alone, without the L1 term",
              "regularized": "regularised loss = criterion + lambda * ||theta||_1, as the original"}


def rule_title(rule: str, reading: str | None, *, delta=None, loss: str = "data") -> str:
    """The words for one rule in one reading, e.g. "largest p with test acc > unpruned (original rule)"."""
    points = "delta points" if delta is None else f"{delta:g} point" + ("" if delta == 1 else "s")
    cond = RULE_CONDITIONS.get(rule, rule).format(delta=points, loss=loss)
    text = f"largest p with {cond}" if reading == "largest_passing" else f"{cond} at every p' <= p"
    return text + (" (original rule)" if rule == "above_baseline" else "")


def _limit_lines(lim: dict) -> list[str]:
    pred, loss, delta = lim["predicted"], lim.get("loss", "data"), lim.get("delta")
    actual = lim.get("actual", {})
    table = [("predicted (Gaussian width fixed point)", pred)]
    # summaries written before readings existed: each rule was read its default way
    table += [(f"actual: {rule_title(rule, v.get('reading') or DEFAULT_READING.get(rule), delta=delta, loss=loss)}", v)
              for rule, v in actual.items()]
    width = max(len(label) for label, _ in table)
    lines = ["", f"{'How sparse can it be pruned?':<{width + 2}}  prune fraction  keep fraction"]
    for label, v in table:
        lines.append(f"  {label:<{width}}  {_frac(v.get('prune_fraction')):>14}  {_frac(v.get('keep_fraction')):>13}")
    if pred.get("prune_fraction") is None and pred.get("reason"):
        lines.append(f"    (no prediction: {pred['reason']})")
    for rule, v in actual.items():
        if v.get("prune_fraction") is None and v.get("reason"):
            title = rule_title(rule, v.get("reading") or DEFAULT_READING.get(rule), delta=delta, loss=loss)
            lines.append(f"    ({title}: no limit - {v['reason']})")
    others = [f"{rule_title(rule, rd, delta=delta, loss=loss)}: "
              f"{'none' if o.get('prune_fraction') is None else _frac(o['prune_fraction'])}" for rule, v in actual.items()
              for rd, o in (v.get("readings") or {}).items()
              if rd != v.get("reading") and o.get("prune_fraction") != v.get("prune_fraction")]
    if others:
        lines.append(f"  other reading: {'; '.join(others)}")
    ddof = lim.get("epsilon_ddof")
    lines.append(f"  eps {lim.get('eps', 0):.4g}" + ("" if ddof is None else f" (std, ddof {ddof}, of the per-batch "
                                                          f"train {loss} loss)")
                 + f", flat fraction q {lim.get('important_ev_rate', 0):.2f}")
    lines.append(f"  loss convention: {LOSS_WORDS.get(loss, loss)}")
    return lines


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f} %"


def _frac(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def summary_lines(s: dict) -> list[str]:
    lines = [f"prunelimit {s.get('pipeline', '')} run: {s.get('model')} on {s.get('dataset') or '(no dataset)'}"]
    dense = s.get("dense") or {}
    if dense:
        lines.append(f"  dense model ({dense.get('source')}): test top-1 {_pct(dense.get('test_top1'))}")
    lim = s.get("limit")
    if lim:
        lines += _limit_lines(lim)
    gp = s.get("gp")
    if gp:
        lines.append("")
        lines.append(f"Pruning at sparsity {s.get('sparsity')}:")
        lines.append(f"  {'method':<7} {'achieved':>9} {'before':>9} {'pruned':>9} {'fine-tuned':>11}")
        for m, r in gp.items():
            ft = (r.get("finetune") or {}).get("best_top1")
            lines.append(f"  {TITLES.get(m, m):<7} {r['sparsity_achieved']:>9.4f} {_pct(r.get('pre_acc')):>9} "
                         f"{_pct(r.get('post_prune_acc')):>9} {_pct(ft):>11}")
        for m, r in gp.items():
            groups = r.get("groups") or {}
            if groups:
                parts = [f"{g} {v['sparsity']:.3f}" for g, v in list(groups.items())[:8]]
                more = " ..." if len(groups) > 8 else ""
                lines.append(f"  {TITLES.get(m, m)} sparsity by layer group: {', '.join(parts)}{more}")
            size = r.get("size_and_compute") or {}
            if size:
                speed = f"theoretical speed-up {size['speedup']:.2f}x, " if size.get("speedup") else ""
                lines.append(f"  {TITLES.get(m, m)} size and compute: {size['nonzeros']:,} of {size['params']:,} "
                             f"parameters non-zero; {speed}{size['bytes_dense']:,} bytes dense, "
                             f"{size['bytes_compressed']:,} compressed")
            if r.get("clamped_layers"):
                lines.append(f"  {TITLES.get(m, m)} layers clamped by the MT floor ({r.get('floor')} weights): "
                             f"{', '.join(r['clamped_layers'][:6])}{' ...' if len(r['clamped_layers']) > 6 else ''}")
    run_dir = s.get("run_dir")
    if run_dir:
        lines.append("")
        lines.append(f"Files in {run_dir}/:")
        for sub in ("limit", *(gp or {})):
            folder = Path(run_dir) / sub
            if folder.is_dir():
                names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
                lines.append(f"  {sub}/: {', '.join(names)}")
    if s.get("seconds") is not None:
        stages = s.get("stage_seconds") or {}
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        lines.append(f"Finished in {s['seconds']} s" + (f" (seconds per stage: {parts})." if parts else "."))
    return lines


def print_summary(s: dict) -> None:
    if dist.is_main():
        print("\n" + "\n".join(summary_lines(s)), flush=True)


def write_summary(run_dir: str | Path, s: dict) -> None:
    if not dist.is_main():
        return
    run_dir = Path(run_dir)
    write_json(run_dir / paths.SUMMARY, s)
    atomic_write_text(run_dir / paths.REPORT, report_markdown(s))


def report_markdown(s: dict) -> str:
    lines = ["# prunelimit report", "", "```", *summary_lines(s), "```", ""]
    lim_dir = Path(s.get("run_dir", ".")) / paths.LIMIT
    for name, title in ((paths.SWEEP_PNG, "Accuracy and loss versus prune fraction"),
                        (paths.WIDTH_PNG, "Gaussian width g(R(p)) and p against R"),
                        (paths.DENSITY_PNG, "Hessian spectral density (SLQ)"),
                        (paths.ROWS_PNG, "Hessian row norms at magnitude quantiles")):
        if (lim_dir / name).exists():
            lines += [f"## {title}", "", f"![{title}](limit/{name})", ""]
    return "\n".join(lines)


def report_from_dir(run_dir: str | Path) -> dict:
    path = Path(run_dir) / paths.SUMMARY
    if not path.exists():
        raise PrunelimitError(f"{str(run_dir)!r} has no summary.json: it is not a finished prunelimit run directory "
                         f"(run `prunelimit run ...` first, or give the --out directory of one)")
    return read_json(path)
