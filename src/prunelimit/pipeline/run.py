"""The three pipelines behind ``prunelimit run``: gp, limit, and the embedded default (limit, then GP and
GP+MT at the predicted limit). Each stage is a unit the runner drives; this module only wires what one
stage's typed result passes on to the next, and gathers them into the ``RunSummary``."""
from __future__ import annotations

import time

from prunelimit.config.schema import RunConfig
from prunelimit.pipeline.common import default_out, load_data, open_run, say, timed
from prunelimit.pipeline.dense import dense_model
from prunelimit.pipeline.gp import run_gp
from prunelimit.pipeline.limit import run_limit
from prunelimit.pipeline.results import RunSummary
from prunelimit.pipeline.stages import planned_stages
from prunelimit.runs.report import print_summary, write_summary


def run_pipeline(cfg: RunConfig, argv: list[str] | None = None, *, allow_pickle: bool = False) -> RunSummary:
    """``allow_pickle``: this command line's opt-in to unpickling checkpoint files (never from a config)."""
    start = time.time()
    with open_run(cfg, argv, stages=planned_stages(cfg, default_out(cfg)), allow_pickle=allow_pickle) as ctx:
        return _run(ctx, start)


def _run(ctx, start: float) -> RunSummary:
    cfg = ctx.cfg
    say(f"run directory: {ctx.run.path}  (device {ctx.device})")
    with timed(ctx, "data"):
        data = load_data(cfg)
    with timed(ctx, "dense"):
        model, dense = dense_model(ctx, data)
    limit = sparsity = gp = None
    if cfg.pipeline in ("limit", "default"):
        limit = run_limit(ctx, model, data)
    if cfg.pipeline in ("gp", "default"):
        sparsity = cfg.prune.sparsity
        if cfg.gp.sparsity_from == "predicted_limit":
            predicted = limit.predicted.prune_fraction if limit is not None else None
            if predicted is None:
                say(f"no predicted limit available; pruning at prune.sparsity = {sparsity}")
            else:
                sparsity = round(predicted, 4)
                say(f"pruning with GP and GP+MT at the predicted limit: sparsity {sparsity}")
        with timed(ctx, "gp"):
            gp = run_gp(ctx, model, dense, data, sparsity)
    # the time of the work: a stage reused from an earlier command counts with the seconds it took then
    seconds, per_stage, reused = ctx.runner.work_seconds(time.time() - start, {"data": ctx.timings["data"]})
    summary = RunSummary(pipeline=cfg.pipeline, run_dir=str(ctx.run.path), model=cfg.model.name,
                         dataset=cfg.data.dataset, dense=dense, limit=limit, sparsity=sparsity, gp=gp,
                         seconds=seconds, stage_seconds=per_stage, reused_stages=reused or None)
    summary = summary.keeping(_earlier_summary(ctx.run.path))
    write_summary(ctx.run.path, summary)
    print_summary(summary)
    return summary


def _earlier_summary(run_dir) -> RunSummary | None:
    """The directory's previous summary.json, or None (none yet, or unreadable: then it is rewritten)."""
    from prunelimit.errors import PrunelimitError
    from prunelimit.runs.report import report_from_dir

    try:
        return report_from_dir(run_dir)
    except PrunelimitError:
        return None
