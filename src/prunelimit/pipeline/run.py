"""The three pipelines behind ``prunelimit run``: gp, limit, and the embedded default (limit, then GP and
GP+MT at the predicted limit)."""
from __future__ import annotations

import time

from prunelimit.config.schema import RunConfig
from prunelimit.pipeline.common import default_out, load_data, open_run, say, timed
from prunelimit.pipeline.stages import planned_stages
from prunelimit.pipeline.dense import dense_model
from prunelimit.pipeline.gp import run_gp
from prunelimit.pipeline.limit import run_limit
from prunelimit.runs.report import print_summary, write_summary


def run_pipeline(cfg: RunConfig, argv: list[str] | None = None, *, allow_pickle: bool = False) -> dict:
    """``allow_pickle``: this command line's opt-in to unpickling checkpoint files (never from a config)."""
    start = time.time()
    with open_run(cfg, argv, stages=planned_stages(cfg, default_out(cfg)), allow_pickle=allow_pickle) as ctx:
        return _run(ctx, start)


def _run(ctx, start: float) -> dict:
    cfg = ctx.cfg
    say(f"run directory: {ctx.run.path}  (device {ctx.device})")
    with timed(ctx, "data"):
        data = load_data(cfg)
    with timed(ctx, "dense"):
        model, dense_record = dense_model(ctx, data)
    summary: dict = {"pipeline": cfg.pipeline, "run_dir": str(ctx.run.path), "model": cfg.model.name,
                     "dataset": cfg.data.dataset, "dense": dense_record}
    if cfg.pipeline in ("limit", "default"):
        summary["limit"] = run_limit(ctx, model, data)
    if cfg.pipeline in ("gp", "default"):
        sparsity = cfg.prune.sparsity
        if cfg.gp.sparsity_from == "predicted_limit":
            predicted = ((summary.get("limit") or {}).get("predicted") or {}).get("prune_fraction")
            if predicted is None:
                say(f"no predicted limit available; pruning at prune.sparsity = {sparsity}")
            else:
                sparsity = round(predicted, 4)
                say(f"pruning with GP and GP+MT at the predicted limit: sparsity {sparsity}")
        summary["sparsity"] = sparsity
        with timed(ctx, "gp"):
            summary["gp"] = run_gp(ctx, model, dense_record, data, sparsity)
        cfg = ctx.cfg  # GP+MT may have lowered min_threshold to fit the predicted sparsity
    summary["seconds"] = round(time.time() - start, 1)
    summary["stage_seconds"] = dict(ctx.timings)   # this command's wall time per stage (finished ones: reload)
    write_summary(ctx.run.path, summary)
    print_summary(summary)
    return summary
