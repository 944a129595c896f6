"""The dense model every pipeline starts from: a given checkpoint, or training (optionally with L1)."""
from __future__ import annotations

import dataclasses

from torch import nn

from prunelimit.runs import paths
from prunelimit.pipeline.stages import dense_stage
from prunelimit.pipeline.common import Context, Data, build_model, eval_loader, load_weights, say, train_loader
from prunelimit.runs.io import atomic_torch_save
from prunelimit.errors import PrunelimitError

DENSE_FILE = paths.MODEL_FINAL


def dense_model(ctx: Context, data: Data | None, *, train_if_needed: bool = True) -> tuple[nn.Module, dict]:
    """Return the dense model (on ctx.device) and its record ``{source, test top1, ...}``.

    Stage ``dense``: skipped when finished before (the weights are read back from the run directory);
    an unfinished training resumes from its last checkpoint. ``train_if_needed=False`` (the ``prune``
    command): without a checkpoint the model keeps its random initial weights."""
    cfg, run = ctx.cfg, ctx.run
    model = build_model(cfg, with_data=data is not None)
    stage = dense_stage(cfg)
    done = ctx.runner.check(stage)
    if done is not None and done.get("weights"):
        load_weights(model, done["weights"], allow_pickle=ctx.allow_pickle and done["source"] == "checkpoint")
        say(f"dense model: reusing {done['weights']} (finished earlier)")
        return model.to(ctx.device), done
    if done is not None:
        say("dense model: its weights were not kept (stages.save_model: false); training it again")

    if cfg.model.checkpoint:
        load_weights(model, cfg.model.checkpoint, allow_pickle=ctx.allow_pickle)
        model.to(ctx.device)
        record = {"source": "checkpoint", "weights": str(cfg.model.checkpoint)}
        if data is not None:
            from prunelimit.pipeline.common import evaluator

            m = evaluator(cfg, eval_loader(cfg, data.test, cfg.train.batch_size, ctx.device), ctx.device,
                          data.num_classes, with_l1=False)(model)
            record.update(test_top1=m["top1"], test_top5=m["top5"], test_loss=m["loss"])
            say(f"dense model: loaded {cfg.model.checkpoint}, test top-1 {m['top1']:.2f} %")
        else:
            say(f"dense model: loaded {cfg.model.checkpoint} (no dataset configured: not evaluated)")
        ctx.runner.done(stage, record)
        return model, record

    if data is None or not train_if_needed:
        say(f"dense model: {cfg.model.name} with random initial weights (no --checkpoint given)")
        return model.to(ctx.device), {"source": "random_init", "weights": None}
    if not cfg.stages.train:
        raise PrunelimitError("stages.train is false (original mode: eval) but no dense weights were given: "
                         "set model.checkpoint (original key file_path) to the trained model")

    from prunelimit.train import train

    ctx.runner.start(stage)
    out_dir = run.sub(paths.DENSE)
    t = dataclasses.replace(cfg.train, seed=cfg.seed_for(cfg.train.seed))
    if (out_dir / paths.CHECKPOINT_LAST).exists():
        say(f"resuming dense training from {out_dir / 'checkpoint_last.pth.tar'}")
    l1 = f", L1 lambda {t.l1_lambda:g}" if t.l1_lambda > 0 else ""
    say(f"training {cfg.model.name} on {cfg.data.dataset}: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}{l1}")
    result = train(model.to(ctx.device), train_loader(cfg, data, t.batch_size, ctx.device),
                   eval_loader(cfg, data.test, t.batch_size, ctx.device), t, device=ctx.device,
                   run_dir=out_dir, log_name=paths.TRAIN_LOG, show_progress=cfg.show_progress,
                   num_classes=data.num_classes)
    weights = out_dir / DENSE_FILE
    from prunelimit import dist

    if dist.is_main() and cfg.stages.save_model:
        atomic_torch_save({"state_dict": _plain_state_dict(model)}, weights)
    elif dist.is_main():  # the trained weights live on in memory for this command's later stages only
        for name in (paths.CHECKPOINT_LAST, paths.MODEL_BEST, DENSE_FILE):
            (out_dir / name).unlink(missing_ok=True)
        say(f"dense model: not kept on disk (stages.save_model: false); {out_dir} keeps only train_log.csv")
    final = result.final or {}
    record = {"source": "trained", "weights": str(weights) if cfg.stages.save_model else None, "epochs": t.epochs,
              "test_top1": final.get("test_top1", final.get("top1")), "best_top1": result.best_top1,
              "l1_lambda": t.l1_lambda}
    ctx.runner.done(stage, record)
    acc = record["test_top1"]
    say(f"dense model trained: test top-1 {acc:.2f} %" if acc is not None else "dense model trained")
    return model, record


def _plain_state_dict(model: nn.Module) -> dict:
    m = getattr(model, "module", model)
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}
