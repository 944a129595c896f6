"""Resume: an interrupted and resumed run ends bitwise equal to an uninterrupted one (CPU)."""
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunelimit.runs.io import read_csv
from prunelimit.train import TrainConfig, train


class NoisyData(Dataset):
    """Augmentation drawing from numpy's and Python's global RNGs, so their states must be restored."""

    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x @ torch.randn(8, 3, generator=g)).argmax(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(0, 0.1, 8).astype(np.float32)) * random.random()
        return self.x[i] + noise, self.y[i]


def make_net():
    torch.manual_seed(0)  # dropout and batch norm make RNG and buffers part of the state
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def make_loaders(kind):
    train_set, test_set = NoisyData(), NoisyData(24, seed=1)
    if kind == "plain":  # RandomSampler drawing from the global torch RNG
        return DataLoader(train_set, batch_size=12, shuffle=True), DataLoader(test_set, batch_size=12)
    from prunelimit.data import make_loader

    return make_loader(train_set, 12, shuffle=True, seed=3), make_loader(test_set, 12, shuffle=False)


CFG = dict(epochs=4, batch_size=12, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, l1_lambda=1e-4,
           schedule="cosine", warmup_epochs=1, amp=False, seed=7)


def masks_for(model):
    g = torch.Generator().manual_seed(5)
    return {"0.weight": torch.rand(16, 8, generator=g) > 0.4, "4.weight": torch.rand(3, 16, generator=g) > 0.4}


def run(run_dir, kind, **kw):
    model = make_net()
    train_loader, test_loader = make_loaders(kind)
    res = train(model, train_loader, test_loader, TrainConfig(**CFG), masks=masks_for(model), run_dir=run_dir,
                show_progress=False, **kw)
    return model, res


def rows_without_time(path):
    return [{k: v for k, v in r.items() if k != "Current Time"} for r in read_csv(path)]


@pytest.mark.parametrize("kind", ["plain", "make_loader"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, kind):
    full, full_res = run(tmp_path / "full", kind)
    part, part_res = run(tmp_path / "part", kind, stop_after_epoch=2)
    assert part_res.epochs_run == 2 and len(read_csv(tmp_path / "part" / "train_log.csv")) == 2
    # another process state in between: the resumed run must not depend on it
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    resumed, res = run(tmp_path / "part", kind)
    assert res.resumed_from == 2 and res.epochs_run == 2
    full_sd, resumed_sd = full.state_dict(), resumed.state_dict()
    assert full_sd.keys() == resumed_sd.keys()
    for k in full_sd:
        assert torch.equal(full_sd[k], resumed_sd[k]), k
    assert rows_without_time(tmp_path / "full" / "train_log.csv") == rows_without_time(tmp_path / "part" / "train_log.csv")
    assert res.best_top1 == full_res.best_top1 and res.final == full_res.final

    # a finished run returns at once with its record and the trained weights
    again, done = run(tmp_path / "part", kind)
    assert done.epochs_run == 0 and done.resumed_from == 4 and done.history == res.history
    assert all(torch.equal(v, full_sd[k]) for k, v in again.state_dict().items())


def test_resume_refuses_different_masks(tmp_path):
    run(tmp_path, "plain", stop_after_epoch=1)
    model = make_net()
    train_loader, test_loader = make_loaders("plain")
    other = {k: ~v for k, v in masks_for(model).items()}
    with pytest.raises(ValueError, match="masks given differ"):
        train(model, train_loader, test_loader, TrainConfig(**CFG), masks=other, run_dir=tmp_path,
              show_progress=False)
