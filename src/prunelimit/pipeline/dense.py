"""The dense model every pipeline starts from: a given checkpoint, or training (optionally with L1)."""
from __future__ import annotations

import dataclasses

from torch import nn

from prunelimit.runs import paths
from prunelimit.pipeline.common import (Context, Data, build_model, eval_loader, evaluator, load_weights, say,
                                        train_loader)
from prunelimit.pipeline.results import DenseResult
from prunelimit.pipeline.stages import StageUnit, dense_stage
from prunelimit.runs.io import atomic_torch_save

DENSE_FILE = paths.MODEL_FINAL


class DenseStage(StageUnit):
    """Stage ``dense``: the model from ``model.checkpoint`` (evaluated when a dataset is configured), or
    trained (resuming an unfinished training from its last checkpoint). ``self.model`` holds the weights
    once ``run``, ``load`` or ``unmarked`` returned; ``train_if_needed=False`` (the ``prune`` command):
    without a checkpoint the model keeps its random initial weights, and no marker is written."""

    def __init__(self, ctx: Context, data: Data | None, *, train_if_needed: bool = True):
        self.ctx, self.data, self.train_if_needed = ctx, data, train_if_needed
        self.model = build_model(ctx.cfg, with_data=data is not None)

    def stage(self):
        return dense_stage(self.ctx.cfg)

    def load(self, record):
        result = DenseResult.from_json(record)
        if not result.weights:
            say("dense model: its weights were not kept (stages.save_model: false); training it again")
            return None
        # trained weights are a file of this run (stored relative to it; an older absolute path is mapped
        # into this directory, so a copied run never reads the original's); a checkpoint is the user's file
        weights = result.weights if result.source == "checkpoint" else self.ctx.run.resolve(result.weights,
                                                                                              "dense weights")
        load_weights(self.model, weights, allow_pickle=self.ctx.allow_pickle and result.source == "checkpoint")
        say(f"dense model: reusing {weights} (finished earlier)")
        self.model.to(self.ctx.device)
        return result

    def unmarked(self):
        cfg = self.ctx.cfg
        if cfg.model.checkpoint or (self.data is not None and self.train_if_needed):
            return None   # stages.train: false without model.checkpoint is refused by RunConfig validation
        say(f"dense model: {cfg.model.name} with random initial weights (no --checkpoint given)")
        self.model.to(self.ctx.device)
        return DenseResult(source="random_init", weights=None)

    def run(self):
        if self.ctx.cfg.model.checkpoint:
            return self._from_checkpoint()
        return self._train()

    def _from_checkpoint(self) -> DenseResult:
        ctx, cfg, data, model = self.ctx, self.ctx.cfg, self.data, self.model
        load_weights(model, cfg.model.checkpoint, allow_pickle=ctx.allow_pickle)
        model.to(ctx.device)
        if data is None:
            say(f"dense model: loaded {cfg.model.checkpoint} (no dataset configured: not evaluated)")
            return DenseResult(source="checkpoint", weights=str(cfg.model.checkpoint))
        m = evaluator(cfg, eval_loader(cfg, data.test, cfg.train.batch_size, ctx.device), ctx.device,
                      data.num_classes, with_l1=False)(model)
        say(f"dense model: loaded {cfg.model.checkpoint}, test top-1 {m['top1']:.2f} %")
        return DenseResult(source="checkpoint", weights=str(cfg.model.checkpoint), test_top1=m["top1"],
                           test_top5=m["top5"], test_loss=m["loss"])

    def _train(self) -> DenseResult:
        from prunelimit import dist
        from prunelimit.train import train

        ctx, cfg, data, model = self.ctx, self.ctx.cfg, self.data, self.model
        out_dir = ctx.run.sub(paths.DENSE)
        t = dataclasses.replace(cfg.train, seed=cfg.seed_for(cfg.train.seed))
        if (out_dir / paths.CHECKPOINT_LAST).exists():
            say(f"resuming dense training from {out_dir / 'checkpoint_last.pth.tar'}")
        l1 = f", L1 lambda {t.l1_lambda:g}" if t.l1_lambda > 0 else ""
        say(f"training {cfg.model.name} on {cfg.data.dataset}: {t.epochs} epochs, batch {t.batch_size}, "
            f"lr {t.lr:g}{l1}")
        result = train(model.to(ctx.device), train_loader(cfg, data, t.batch_size, ctx.device),
                       eval_loader(cfg, data.test, t.batch_size, ctx.device), t, device=ctx.device,
                       run_dir=out_dir, log_name=paths.TRAIN_LOG, show_progress=cfg.show_progress,
                       num_classes=data.num_classes)
        weights = out_dir / DENSE_FILE
        if dist.is_main() and cfg.stages.save_model:
            atomic_torch_save({"state_dict": _plain_state_dict(model)}, weights)
        elif dist.is_main():  # the trained weights live on in memory for this command's later stages only
            for name in (paths.CHECKPOINT_LAST, paths.MODEL_BEST, DENSE_FILE):
                (out_dir / name).unlink(missing_ok=True)
            say(f"dense model: not kept on disk (stages.save_model: false); {out_dir} keeps only train_log.csv")
        final = result.final or {}
        acc = final.get("test_top1", final.get("top1"))
        say(f"dense model trained: test top-1 {acc:.2f} %" if acc is not None else "dense model trained")
        return DenseResult(source="trained", weights=ctx.run.relative(weights) if cfg.stages.save_model else None,
                           epochs=t.epochs, test_top1=acc, best_top1=result.best_top1, l1_lambda=t.l1_lambda)


def dense_model(ctx: Context, data: Data | None, *, train_if_needed: bool = True) -> tuple[nn.Module, DenseResult]:
    """The dense model (on ctx.device) and its ``DenseResult``, through the runner (see ``DenseStage``)."""
    unit = DenseStage(ctx, data, train_if_needed=train_if_needed)
    result = ctx.runner.drive(unit)
    return unit.model, result


def _plain_state_dict(model: nn.Module) -> dict:
    m = getattr(model, "module", model)
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}
