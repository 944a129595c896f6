"""``evaluate``: loss, top-1 and top-5 (percent) over a loader, exact under DDP.

Under DDP each rank evaluates the indices r, r + W, r + 2W, ... of the loader's dataset (not the
loader's own sampler: ``DistributedSampler`` pads the shards with repeated samples), and the sums are
all-reduced, so every rank returns the same numbers as one process on the whole dataset.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from prunelimit import dist
from prunelimit.train.objective import criterion_from_name, l1_penalty
from prunelimit.errors import PrunelimitError


def split_batch(batch, where: str = "loader") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise PrunelimitError(f"{where} must yield (inputs, targets) pairs, got a {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    return batch[0], batch[1]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numbers of samples whose target is the top-1 / among the top-5 logits (top-C when C < 5)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (B, k)
    hit = top == targets.unsqueeze(1)     # (B, k)
    return hit[:, 0].sum(), hit.any(dim=1).sum()


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
             l1_params: str = "weight_bias", show_progress: bool = False, amp: bool = False) -> dict:
    """Evaluate ``model`` (in eval mode, no grad) over ``loader``.

    Returns ``{"loss", "data_loss", "l1_penalty", "top1", "top5", "count"}``: ``data_loss`` is the mean
    per-sample criterion, ``l1_penalty`` = ``l1_lambda * sum|theta|`` and ``loss`` their sum (what the
    limit paper's sweep reports),
    ``top1``/``top5`` are percentages, ``count`` the number of samples. ``amp`` autocasts to float16
    on CUDA. The model's train/eval mode is restored afterwards.
    """
    crit = criterion_from_name(criterion, num_classes, label_smoothing)
    if l1_lambda < 0:
        raise PrunelimitError(f"l1_lambda must be >= 0, got {l1_lambda}")
    model = getattr(model, "module", model)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if dist.is_distributed():
        loader = shard_loader(loader)
    was_training = model.training
    model.eval()
    # (loss sum, top-1 hits, top-5 hits, samples); float64 so large datasets sum exactly
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    use_amp = amp and device.type == "cuda"
    try:
        for batch in tqdm(loader, desc="eval", leave=False, disable=not show_progress or not dist.is_main()):
            x, y = split_batch(batch, "the evaluation loader")
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16) if use_amp else nullcontext():
                logits = model(x)
            logits = logits.float()
            c1, c5 = topk_correct(logits, y)
            n = y.shape[0]
            sums += torch.stack([crit(logits, y).double() * n, c1.double(), c5.double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
    finally:
        model.train(was_training)
    dist.all_reduce_sum(sums)
    count = int(sums[3])
    if count == 0:
        raise PrunelimitError("the evaluation loader yielded no samples; check the test dataset and its path")
    data_loss = float(sums[0]) / count
    l1_term = l1_lambda * float(l1_penalty(model, l1_params)) if l1_lambda > 0 else 0.0
    return {"loss": data_loss + l1_term, "data_loss": data_loss, "l1_penalty": l1_term, "top1": 100.0 * float(sums[1]) / count,
            "top5": 100.0 * float(sums[2]) / count, "count": count}
