"""``evaluate``: loss, top-1 and top-5 (percent) over a loader, exact under DDP.

Any model and loss (see ``train/batches.py``): with ``loss_fn`` the loss is the user's; top-1/top-5 are
NaN where accuracy does not apply (not (B, C) logits with (B,) class targets), and a language-model
loss adds ``perplexity``.

Under DDP each rank evaluates the indices r, r + W, r + 2W, ... of the loader's dataset (not the
loader's own sampler: ``DistributedSampler`` pads the shards with repeated samples), and the sums are
all-reduced, so every rank returns the same numbers as one process on the whole dataset.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from prunelimit import dist
from prunelimit.train.batches import Objective, perplexity, split_batch, topk_correct  # noqa: F401 (re-exported)
from prunelimit.train.objective import criterion_from_name, l1_penalty
from prunelimit.errors import PrunelimitError


def shard_loader(loader: DataLoader) -> DataLoader:
    """This rank's exact share of ``loader.dataset`` (no padding), with the loader's batch settings."""
    n = len(loader.dataset)
    indices = list(range(dist.rank(), n, dist.world_size()))
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1
    return DataLoader(Subset(loader.dataset, indices), batch_size=batch_size, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device=None, criterion: str = "cross_entropy",
             num_classes: int | None = None, label_smoothing: float = 0.0, l1_lambda: float = 0.0,
             l1_params: str = "weight_bias", show_progress: bool = False, amp: bool = False,
             loss_fn=None, metrics_fn=None) -> dict:
    """Evaluate ``model`` (in eval mode, no grad) over ``loader``.

    Returns ``{"loss", "data_loss", "top1", "top5", "count"}``: ``data_loss`` is the mean per-sample
    criterion (batch means weighted by batch size), ``loss`` adds ``l1_lambda * sum|theta|`` (what the
    limit paper's sweep reports), ``top1``/``top5`` are percentages (NaN when accuracy does not apply),
    ``count`` the number of samples; ``perplexity`` = exp(data_loss) for a language-model ``loss_fn``, and
    the means of ``metrics_fn(output, target)``'s entries. ``loss_fn(output, target)`` (raw output) or
    ``pl.model_loss(fn)`` replaces the criterion. ``amp`` autocasts to float16 on CUDA. The model's
    train/eval mode is restored afterwards.
    """
    crit = criterion_from_name(criterion, num_classes, label_smoothing)
    objective = Objective(crit, loss_fn, metrics_fn)
    if l1_lambda < 0:
        raise PrunelimitError(f"l1_lambda must be >= 0, got {l1_lambda}")
    from prunelimit.pruning.names import unwrap_model

    model = unwrap_model(model)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if dist.is_distributed():
        loader = shard_loader(loader)
    was_training = model.training
    model.eval()
    # (loss sum, top-1 hits, top-5 hits, samples, samples with accuracy); float64 so large datasets sum exactly
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    metric_sums: dict[str, float] = {}
    use_amp = amp and device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.float16) if use_amp else None
    try:
        for batch in tqdm(loader, desc="eval", leave=False, disable=not show_progress or not dist.is_main()):
            loss, n, hits, metrics = objective.forward(model, batch, device, autocast, "the evaluation loader")
            c1, c5 = hits if hits is not None else (torch.zeros((), device=device),) * 2
            sums += torch.stack([loss.double() * n, c1.double(), c5.double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device),
                                 torch.tensor(float(n if hits is not None else 0), dtype=torch.float64, device=device)])
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + v * n
    finally:
        model.train(was_training)
    dist.all_reduce_sum(sums)
    count = int(sums[3])
    if count == 0:
        raise PrunelimitError("the evaluation loader yielded no samples; check the test dataset and its path")
    data_loss = float(sums[0]) / count
    l1_term = l1_lambda * float(l1_penalty(model, l1_params)) if l1_lambda > 0 else 0.0
    scored = float(sums[4])
    nan = float("nan")
    out = {"loss": data_loss + l1_term, "data_loss": data_loss,
           "top1": 100.0 * float(sums[1]) / scored if scored else nan,
           "top5": 100.0 * float(sums[2]) / scored if scored else nan, "count": count}
    if objective.perplexity:
        out["perplexity"] = perplexity(data_loss)
    if metric_sums:
        names = sorted(metric_sums)
        reduced = torch.tensor([metric_sums[k] for k in names], dtype=torch.float64, device=device)
        dist.all_reduce_sum(reduced)
        out.update({k: float(v) / count for k, v in zip(names, reduced)})
    return out
