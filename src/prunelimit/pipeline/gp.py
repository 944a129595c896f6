"""GP and GP+MT: prune the dense model once per method, write the original's files, fine-tune.

Per method directory (``gp/``, ``gp_mt/``): ``prune_log.csv`` (GP, as the original's first stage),
``layer_sparsities.csv`` and ``prune_refined_log.csv`` (GP+MT), ``prunedmodel.pth.tar``,
``weight_mask.safetensors``, ``finetune_log.csv``, ``model_best.pth.tar``, ``checkpoint_last.pth.tar``.
"""
from __future__ import annotations

import copy
import warnings
import dataclasses
from pathlib import Path

import torch
from torch import nn

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.pipeline.results import DenseResult, FinetuneResult, LayerGroup, PruneResult, SizeAndCompute
from prunelimit.pipeline.stages import Stage, StageUnit, finetune_stage, prune_stage
from prunelimit.pipeline.common import Context, Data, eval_loader, evaluator, group_name, say, train_loader
from prunelimit.runs.io import atomic_torch_save
from prunelimit.runs.prune_logs import write_layer_sparsities, write_prune_log

MASK_FILE = paths.MASK
PRUNED_FILE = paths.PRUNED_MODEL
METHOD_TITLES = {"gp": "GP", "gp_mt": "GP+MT"}


def compute_masks(model: nn.Module, method: str, sparsity: float, prune_cfg) -> tuple[dict, dict, object | None]:
    """``(masks, gp_masks, mt_plan)`` for one method. GP+MT also returns the plan of per-layer counts."""
    from prunelimit.pruning import global_magnitude_masks, min_threshold_plan_and_masks

    kw = dict(include=prune_cfg.include, exclude=prune_cfg.exclude)
    if method == "gp":
        gp_masks = global_magnitude_masks(model, sparsity, rule=prune_cfg.rule, **kw)
        return gp_masks, gp_masks, None
    # MT first, so an infeasible floor is refused before anything else is computed or said
    plan, masks = min_threshold_plan_and_masks(model, sparsity, prune_cfg.min_threshold or 0.0,
                                               mode=prune_cfg.mt_mode, **kw)
    with warnings.catch_warnings():
        # plain GP is only the reference row of prune_log.csv here; a layer it would collapse is kept by the floor
        warnings.simplefilter("ignore", UserWarning)
        gp_masks = global_magnitude_masks(model, sparsity, rule=prune_cfg.rule, **kw)
    return masks, gp_masks, plan


class PruneStage(StageUnit):
    """Stage ``<method>_prune``: prune a copy of ``dense`` at ``sparsity``; write the logs, the pruned model
    and the mask. ``self.model`` / ``self.masks`` hold the pruned model and its masks once it returned."""

    def __init__(self, ctx: Context, dense: nn.Module, data: Data | None, method: str, sparsity: float,
                 pre_acc: float | None):
        self.ctx, self.dense, self.data, self.method, self.sparsity = ctx, dense, data, method, sparsity
        self.pre_acc = pre_acc
        self.out = ctx.run.sub(method)
        self.model, self.masks = copy.deepcopy(dense), None

    def stage(self):
        return prune_stage(self.ctx.cfg, self.method, self.sparsity)

    def load(self, record):
        from prunelimit.pruning import apply_masks, load_masks

        self.masks = {k: v.to(self.ctx.device) for k, v in load_masks(self.out / MASK_FILE).items()}
        apply_masks(self.model, self.masks)
        say(f"{METHOD_TITLES[self.method]}: reusing masks in {self.out} (finished earlier)")
        return PruneResult.from_json(record)

    def run(self):
        from prunelimit.pruning import apply_masks, mask_sparsity, save_masks

        ctx, cfg, data, dense, model, out = self.ctx, self.ctx.cfg, self.data, self.dense, self.model, self.out
        method, sparsity, pre_acc = self.method, self.sparsity, self.pre_acc
        evaluate = None
        if data is not None:
            evaluate = evaluator(cfg, eval_loader(cfg, data.test, cfg.finetune.batch_size, ctx.device), ctx.device,
                                 data.num_classes, with_l1=False)
        masks, gp_masks, plan = compute_masks(model, method, sparsity, cfg.prune)

        def accuracy_with(m: dict) -> float | None:
            """Accuracy of the dense weights pruned by ``m``, measured on ``model`` (reset to dense first)."""
            if evaluate is None:
                return None
            model.load_state_dict(dense.state_dict())
            apply_masks(model, m)
            return evaluate(model)["top1"]

        gp_post = accuracy_with(gp_masks)
        write_prune_log(out / paths.PRUNE_LOG, mask_sparsity(gp_masks), pre_acc, gp_post)
        post = gp_post
        stats = mask_sparsity(masks)
        if plan is not None:
            write_layer_sparsities(out / paths.LAYER_SPARSITIES, plan)
            post = accuracy_with(masks)
            write_prune_log(out / paths.PRUNE_REFINED_LOG, stats, pre_acc, post)
            clamped, dense_layers = plan.clamped_layers, plan.dense_layers
            say(f"GP+MT ({cfg.prune.mt_mode}, MT {cfg.prune.min_threshold} % -> floor {plan.floor} weights/layer): "
                f"{len(clamped)} layer(s) clamped by the floor{': ' + ', '.join(clamped[:6]) if clamped else ''}"
                f"{' ...' if len(clamped) > 6 else ''}; {len(dense_layers)} left dense")
        model.load_state_dict(dense.state_dict())
        apply_masks(model, masks)
        self.masks = masks
        n, pruned = stats.total, stats.pruned
        if dist.is_main():
            atomic_torch_save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
                              out / PRUNED_FILE)
            save_masks(out / MASK_FILE, masks, metadata={
                "model": cfg.model.name, "method": method, "sparsity": repr(sparsity),
                "min_threshold": repr(cfg.prune.min_threshold), "mt_mode": cfg.prune.mt_mode})
        acc = f", test top-1 {post:.2f} %" if post is not None else " (no dataset configured: evaluation skipped)"
        say(f"{METHOD_TITLES[method]}: pruned {pruned:,} of {n:,} prunable weights "
            f"(sparsity {pruned / n:.4f}, keep fraction {1 - pruned / n:.4f}){acc}")
        return PruneResult(method=method, sparsity_target=sparsity, prunable_weights=n, pruned_weights=pruned,
                           sparsity_achieved=pruned / n if n else 0.0, pre_acc=pre_acc, post_prune_acc=post,
                           gp_post_prune_acc=gp_post, groups=_group_sparsity(stats.layers),
                           clamped_layers=tuple(plan.clamped_layers) if plan is not None else (),
                           floor=plan.floor if plan is not None else None, dir=ctx.run.relative(out))


class FinetuneStage(StageUnit):
    """Stage ``<method>_finetune``: masked fine-tuning of ``model`` into ``out`` (resumes from
    ``out/checkpoint_last.pth.tar``); its declaration ``stage`` (``finetune_stage``) fingerprints the
    checksums of the masks and weights it starts from."""

    def __init__(self, ctx: Context, model: nn.Module, masks: dict, data: Data, out: Path, stage: Stage,
                 title: str, pre_acc: float | None):
        self.ctx, self.model, self.masks, self.data, self.out = ctx, model, masks, data, out
        self._stage, self.title, self.pre_acc = stage, title, pre_acc

    def stage(self):
        return self._stage

    def load(self, record):
        """The finished fine-tuning's result, with ``self.model`` holding the weights it ended with (the
        last epoch's, as ``run`` leaves them; later stages measure these), or None when its last
        checkpoint is gone (then it is fine-tuned again)."""
        from prunelimit.pruning import apply_masks
        from prunelimit.runs.checkpoint import load_checkpoint_file

        last = self.out / paths.CHECKPOINT_LAST
        if not last.is_file():
            say(f"{self.title}: {last} is gone; fine-tuning again")
            return None
        result = FinetuneResult.from_json(record)
        self.model.load_state_dict(load_checkpoint_file(last, map_location=self.ctx.device)["model"])
        apply_masks(self.model, self.masks)   # exact zeros, as fine-tuning kept them
        say(f"{self.title}: fine-tuning finished earlier (best top-1 {result.best_top1:.2f} %); its final "
            f"weights loaded from {last}")
        return result

    def run(self):
        from prunelimit.pruning import count_nonzero_pruned
        from prunelimit.train import train

        ctx, cfg, data, model, masks, out = self.ctx, self.ctx.cfg, self.data, self.model, self.masks, self.out
        f = dataclasses.replace(cfg.finetune, seed=cfg.seed_for(cfg.finetune.seed))
        if (out / paths.CHECKPOINT_LAST).exists():
            say(f"{self.title}: resuming fine-tuning from {out / 'checkpoint_last.pth.tar'}")
        say(f"{self.title}: fine-tuning {f.epochs} epochs (lr {f.lr:g}, {f.schedule} schedule, "
            f"label smoothing {f.label_smoothing:g}, batch {f.batch_size})")
        result = train(model, train_loader(cfg, data, f.batch_size, ctx.device),
                       eval_loader(cfg, data.test, f.batch_size, ctx.device), f, device=ctx.device, masks=masks,
                       run_dir=out, log_name=paths.FINETUNE_LOG, orig_acc=self.pre_acc,
                       show_progress=cfg.show_progress, num_classes=data.num_classes)
        nonzero_pruned = count_nonzero_pruned(model, masks)
        if nonzero_pruned:
            raise RuntimeError(f"{nonzero_pruned} pruned weights became non-zero during fine-tuning (a bug; please report)")
        final = result.final or {}
        say(f"{self.title}: fine-tuned, best test top-1 {result.best_top1:.2f} %")
        return FinetuneResult(best_top1=result.best_top1, final_top1=final.get("test_top1", final.get("top1")),
                              epochs=f.epochs, pruned_weights_nonzero=0, dir=ctx.run.relative(out))


def run_gp(ctx: Context, dense: nn.Module, dense_result: DenseResult, data: Data | None,
           sparsity: float) -> dict[str, PruneResult]:
    """Every configured method at ``sparsity``; returns ``{method: PruneResult}`` (with size and compute,
    and the fine-tuning when configured)."""
    cfg = ctx.cfg
    methods = list(cfg.gp.methods)
    if "gp_mt" in methods and not cfg.prune.min_threshold:
        say("GP+MT skipped: prune.min_threshold (--min-threshold) is not set")
        methods.remove("gp_mt")
    if "gp_mt" in methods and cfg.gp.sparsity_from == "predicted_limit":
        cfg = _fit_min_threshold(ctx, dense, sparsity)
    pre_acc = dense_result.test_top1
    if pre_acc is None and data is not None:
        pre_acc = evaluator(cfg, eval_loader(cfg, data.test, cfg.finetune.batch_size, ctx.device), ctx.device,
                            data.num_classes, with_l1=False)(dense)["top1"]
    results = {}
    for method in methods:
        unit = PruneStage(ctx, dense, data, method, sparsity, pre_acc)
        result = ctx.runner.drive(unit)
        result = dataclasses.replace(result, size_and_compute=size_and_compute(ctx, dense, data, method, unit.masks))
        if cfg.gp.finetune and data is not None and cfg.finetune.epochs > 0:
            out = ctx.run.sub(method)
            stage = finetune_stage(cfg, method, masks=out / MASK_FILE, weights=out / PRUNED_FILE, method_dir=out,
                                   run_path=ctx.run.path, command=ctx.command)
            finetune = ctx.runner.drive(FinetuneStage(ctx, unit.model, unit.masks, data, out, stage,
                                                      METHOD_TITLES[method], pre_acc))
            result = dataclasses.replace(result, finetune=finetune)
        results[method] = result
    return results


def size_and_compute(ctx: Context, dense: nn.Module, data: Data | None, method: str, masks: dict) -> SizeAndCompute:
    """The sparsity report of one pruned method (MACs from one zero example of the input shape, when known)."""
    from prunelimit.pruning import sparsity_report

    shape = ctx.cfg.model.input_shape or (data.test[0][0].shape if data is not None else None)
    first = next(dense.parameters())
    example = torch.zeros(1, *shape, dtype=first.dtype, device=first.device) if shape is not None else None
    rep = sparsity_report(dense, masks, example)
    say(f"{METHOD_TITLES.get(method, method)} size and compute:\n{rep.format(max_layers=8)}")
    measured = example is not None
    if not measured:
        say("  multiply-adds not measured: give --input-shape C,H,W (or --dataset) for the example input")
    return SizeAndCompute(params=rep.params, nonzeros=rep.nonzeros,
                          dense_macs=rep.dense_macs if measured else None,
                          sparse_macs=rep.sparse_macs if measured else None,
                          speedup=rep.speedup if measured else None, bytes_dense=rep.bytes_dense,
                          bytes_compressed=rep.bytes_compressed)


def _fit_min_threshold(ctx: Context, model: nn.Module, sparsity: float):
    """At a predicted (not user-chosen) sparsity the configured MT may be infeasible; lower it to the
    largest feasible MT and say so, rather than failing after the whole limit pipeline ran. The run's
    config (and its config.yaml, which records what was used) then holds the lowered MT."""
    from prunelimit.config.build import to_dict
    from prunelimit.pruning import max_feasible_min_threshold, prunable_parameters

    cfg = ctx.cfg
    sizes = [p.numel() for _, p in prunable_parameters(model, cfg.prune.include, cfg.prune.exclude)]
    largest = max_feasible_min_threshold(sizes, sparsity)
    if cfg.prune.min_threshold > largest:
        say(f"GP+MT: min_threshold {cfg.prune.min_threshold:g} % is infeasible at the predicted sparsity "
            f"{sparsity}; using the largest feasible MT, {largest:.6g} %")
        cfg = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, min_threshold=largest))
        ctx.cfg = ctx.runner.cfg = cfg
        ctx.run.write_config(to_dict(cfg))
    return cfg


def _group_sparsity(layers) -> dict[str, LayerGroup]:
    """Per layer group (``layer1``, ``fc``): weights, pruned, sparsity; ``layers`` from ``mask_sparsity``."""
    counts: dict[str, list[int]] = {}
    for r in layers:
        n_pruned = counts.setdefault(group_name(r.name), [0, 0])
        n_pruned[0] += r.n
        n_pruned[1] += r.pruned
    return {g: LayerGroup(n=n, pruned=pruned, sparsity=pruned / n if n else 0.0) for g, (n, pruned) in counts.items()}
