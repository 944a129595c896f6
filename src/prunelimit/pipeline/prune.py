"""``prunelimit prune`` and ``prunelimit finetune``: the GP repository's two steps as separate commands."""
from __future__ import annotations

import time
from pathlib import Path

from prunelimit.runs import paths
from prunelimit.config import RunConfig
from prunelimit.config.build import ConfigError
from prunelimit.pipeline.common import (Context, build_model, default_out, eval_loader, evaluator, load_data,
                                        load_weights, open_run, say)
from prunelimit.pipeline.stages import finetune_stage, planned_stages, prune_stage
from prunelimit.pipeline.dense import dense_model
from prunelimit.pipeline.gp import MASK_FILE, METHOD_TITLES, PRUNED_FILE, FinetuneStage, run_gp
from prunelimit.pipeline.results import FinetuneResult, PruneResult, RunSummary
from prunelimit.runs.report import print_summary, report_from_dir, write_summary
from prunelimit.errors import PrunelimitError


def prune_command(cfg: RunConfig, argv: list[str], *, allow_pickle: bool = False) -> RunSummary:
    """``allow_pickle``: this command line's opt-in to unpickling the checkpoint (never from a config)."""
    start = time.time()
    stages = planned_stages(cfg, default_out(cfg), gp=False)
    stages += [prune_stage(cfg, m, cfg.prune.sparsity) for m in cfg.gp.methods if m == "gp" or cfg.prune.min_threshold]
    with open_run(cfg, argv, stages=stages, allow_pickle=allow_pickle, command="prune") as ctx:
        return _prune(ctx, start)


def _prune(ctx: Context, start: float) -> RunSummary:
    cfg = ctx.cfg
    say(f"run directory: {ctx.run.path}  (device {ctx.device})")
    data = load_data(cfg)
    if data is None:
        say("no dataset configured (--dataset): accuracy before and after pruning is NOT evaluated")
    model, dense = dense_model(ctx, data, train_if_needed=False)
    from prunelimit.pruning.coverage import coverage

    say(coverage(model, cfg.prune.include, cfg.prune.exclude).format())
    results = run_gp(ctx, model, dense, data, cfg.prune.sparsity)
    summary = RunSummary(pipeline="prune", run_dir=str(ctx.run.path), model=cfg.model.name,
                         dataset=cfg.data.dataset if cfg.data else None, dense=dense, sparsity=cfg.prune.sparsity,
                         gp=results, seconds=round(time.time() - start, 1))
    write_summary(ctx.run.path, summary)
    print_summary(summary)
    return summary


def locate_pruned_run(run_dir: Path, method: str | None) -> tuple[Path, Path, str]:
    """(run directory, method directory, method) from a run dir or a method folder."""
    if not run_dir.exists():
        raise PrunelimitError(f"run directory {str(run_dir)!r} does not exist; give the --out directory of `prunelimit prune`")
    if (run_dir / MASK_FILE).exists() and (run_dir.parent / paths.CONFIG).exists():
        return run_dir.parent, run_dir, run_dir.name
    candidates = [m for m in ("gp", "gp_mt") if (run_dir / m / MASK_FILE).exists()]
    if method is not None:
        if method not in candidates:
            raise PrunelimitError(f"{str(run_dir)!r} has no pruned model for --method {method}; found: {candidates or 'none'}")
        return run_dir, run_dir / method, method
    if not candidates:
        raise PrunelimitError(f"{str(run_dir)!r} holds no pruned model ({{gp,gp_mt}}/{MASK_FILE}); "
                         f"run `prunelimit prune ... --out {run_dir}` first")
    if len(candidates) > 1:
        raise PrunelimitError(f"{str(run_dir)!r} holds several pruned models {candidates}; choose one with --method")
    return run_dir, run_dir / candidates[0], candidates[0]


def finetune_command(cfg: RunConfig, argv: list[str], *, method: str, method_dir: Path, weights: Path,
                     mask_path: Path, evaluate_only: bool = False, allow_pickle: bool = False) -> dict:
    """Fine-tune (or with ``evaluate_only`` only evaluate) the pruned ``weights`` under ``mask_path``.

    ``cfg.out`` is the run directory; ``method_dir`` its folder for this model (``gp/``, ``gp_mt/``, or
    ``finetune/`` for files given by path). ``allow_pickle``: this command line's opt-in to unpickling."""

    run_dir = default_out(cfg)
    if cfg.data is None:
        raise ConfigError("finetune needs a dataset: pass --dataset NAME (and --data-path DIR), "
                          "e.g. --dataset cifar10 --data-path ~/data")
    stage = finetune_stage(cfg, method, masks=mask_path, weights=weights, method_dir=method_dir, run_path=run_dir)
    with open_run(cfg, argv, stages=[] if evaluate_only else [stage], strict_keys={"model"},
                  allow_pickle=allow_pickle, command="finetune") as ctx:
        return _finetune(ctx, stage, method=method, method_dir=method_dir, weights=weights, mask_path=mask_path,
                         evaluate_only=evaluate_only)


def _finetune(ctx: Context, stage, *, method: str, method_dir: Path, weights: Path, mask_path: Path,
              evaluate_only: bool) -> dict:
    from prunelimit.pruning import check_masks_fit, load_legacy_mask_npy, load_masks

    cfg, run_dir = ctx.cfg, ctx.run.path
    data = load_data(cfg)
    model = build_model(cfg)
    load_weights(model, weights, allow_pickle=ctx.allow_pickle)
    if mask_path.suffix == ".npy":
        masks = load_legacy_mask_npy(mask_path, model, allow_pickle=ctx.allow_pickle,
                                     include=cfg.prune.include, exclude=cfg.prune.exclude)
    else:
        masks = load_masks(mask_path)
    check_masks_fit(model, masks, source=str(mask_path), include=cfg.prune.include, exclude=cfg.prune.exclude)
    model.to(ctx.device)
    masks = {k: v.to(ctx.device) for k, v in masks.items()}
    title = METHOD_TITLES.get(method, "pruned model")
    if evaluate_only:
        return _evaluate_only(ctx, model, masks, data, weights, method_dir)
    pruned = PruneResult.from_json(ctx.run.stage_result(f"{method}_prune"))   # None: files given by path
    result = ctx.runner.drive(FinetuneStage(ctx, model, masks, data, ctx.run.sub(method_dir.name), stage, title,
                                            pruned.pre_acc if pruned is not None else None))
    say(f"fine-tuning files: {method_dir}/finetune_log.csv, model_best.pth.tar, checkpoint_last.pth.tar")
    _update_summary(run_dir, method, result)
    return result


def _update_summary(run_dir: Path, method: str, result: FinetuneResult) -> None:
    """Record the fine-tuning in the run's summary.json so `prunelimit report` shows it."""
    from prunelimit import dist

    path = run_dir / paths.SUMMARY
    if not dist.is_main() or not path.exists():
        return
    summary = report_from_dir(run_dir)
    if method in (summary.gp or {}):
        write_summary(run_dir, summary.with_finetune(method, result))


def _evaluate_only(ctx: Context, model, masks: dict, data, weights: Path, method_dir: Path) -> dict:
    from prunelimit.pruning import apply_masks, count_nonzero_pruned, mask_sparsity

    best = method_dir / paths.MODEL_BEST
    source = weights
    if best.exists() and weights.name == PRUNED_FILE:
        load_weights(model, best)
        source = best
    nonzero = count_nonzero_pruned(model, masks)  # before applying: is the checkpoint really pruned?
    apply_masks(model, masks)
    m = evaluator(ctx.cfg, eval_loader(ctx.cfg, data.test, ctx.cfg.finetune.batch_size, ctx.device), ctx.device,
                  data.num_classes, with_l1=False)(model)
    stats = mask_sparsity(masks)
    exact = ("all of them exactly zero in the checkpoint" if nonzero == 0 else
             f"{nonzero:,} of them were NOT zero in the checkpoint and were zeroed before evaluating")
    say(f"evaluated {source}: test top-1 {m['top1']:.2f} %, top-5 {m['top5']:.2f} %, loss {m['loss']:.4f}; "
        f"sparsity {stats.sparsity:.4f} ({stats.pruned:,} of {stats.total:,} prunable weights pruned, {exact})")
    return {"source": str(source), **{k: m[k] for k in ("top1", "top5", "loss")}, "sparsity": stats.sparsity,
            "nonzero_pruned": nonzero}

