"""DDP: two CPU processes (gloo) train with masks; weights agree, masks hold, evaluation is exact.

One module-scoped start of the processes runs every scenario; the tests read what the ranks reported.
"""
import os
import time

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from helpers import free_port as _free_port

pytestmark = pytest.mark.distributed
WORLD = 2
N_TEST = 37  # odd: a padding sampler would count one sample twice


def datasets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40 + N_TEST, 8, generator=g)
    y = (x @ torch.randn(8, 4, generator=g)).argmax(1)
    return TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])


def make_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def make_masks():
    g = torch.Generator().manual_seed(1)
    return {"0.weight": torch.rand(16, 8, generator=g) > 0.5, "2.weight": torch.rand(4, 16, generator=g) > 0.5}


def _worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import prunelimit.runs.io as io
    from prunelimit.train import TrainConfig, evaluate, train

    writes = []
    real_write = io._atomic_write

    def recording_write(path, *a, **kw):
        writes.append(str(path))
        return real_write(path, *a, **kw)

    io._atomic_write = recording_write
    train_set, test_set = datasets()
    sampler = DistributedSampler(train_set, num_replicas=WORLD, rank=rank, shuffle=True, seed=0)
    train_loader = DataLoader(train_set, batch_size=4, sampler=sampler)  # 8 in total
    test_loader = DataLoader(test_set, batch_size=5)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                      schedule="cosine", l1_lambda=1e-3, amp=False)
    out = {}
    # each rank starts from different weights: DDP must broadcast rank 0's
    model = make_net(seed=rank)
    train(model, train_loader, test_loader, cfg, masks=make_masks(), run_dir=f"{tmp}/full", show_progress=False)
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["eval"] = evaluate(model, test_loader)
    part = make_net(seed=rank)
    train(part, train_loader, test_loader, cfg, masks=make_masks(), run_dir=f"{tmp}/part", show_progress=False,
          stop_after_epoch=1)
    part = make_net(seed=10 + rank)
    res = train(part, train_loader, test_loader, cfg, masks=make_masks(), run_dir=f"{tmp}/part",
                show_progress=False)
    out["resumed_from"] = res.resumed_from
    out["resumed_state"] = {k: v.clone() for k, v in part.state_dict().items()}
    out["writes"] = list(writes)
    masks = make_masks()
    if rank == 1:
        masks["2.weight"][0, 0] = ~masks["2.weight"][0, 0]
    try:
        train(make_net(0), train_loader, test_loader, cfg, masks=masks, show_progress=False)
        out["mismatch"] = None
    except ValueError as e:
        out["mismatch"] = str(e)
    torch.save(out, f"{tmp}/rank{rank}.pt")
    tdist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    # fork, as DataLoader workers do: the children reuse the parent's imports (torch, and the
    # torch._dynamo that optimizers import on first use) instead of paying seconds each to load them;
    # they run single-threaded, which keeps fork safe with OpenMP.
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=False,
                             start_method="fork")
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("distributed workers did not finish within 180 s")
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_ranks_end_with_identical_weights_and_exact_masks(ranks):
    _, (r0, r1) = ranks
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    for name, keep in make_masks().items():
        assert (r0["state"][name][~keep] == 0).all() and (r0["state"][name][keep] != 0).all()


def test_distributed_evaluate_equals_single_process(ranks):
    _, (r0, r1) = ranks
    from prunelimit.train import evaluate

    model = make_net(0)
    model.load_state_dict(r0["state"])
    single = evaluate(model, DataLoader(datasets()[1], batch_size=16))
    assert r0["eval"] == r1["eval"]
    assert r0["eval"]["count"] == single["count"] == N_TEST
    assert r0["eval"]["top1"] == single["top1"] and r0["eval"]["top5"] == single["top5"]
    assert r0["eval"]["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_only_rank_zero_writes_files(ranks):
    tmp, (r0, r1) = ranks
    assert r1["writes"] == []
    for name in ("train_log.csv", "checkpoint_last.pth.tar", "model_best.pth.tar"):
        assert (tmp / "full" / name).is_file() and str(tmp / "full" / name) in r0["writes"]
    assert len(torch.load(tmp / "full" / "checkpoint_last.pth.tar", weights_only=True)["rng"]) == WORLD


def test_orig_acc_is_measured_on_rank_zero_weights(ranks):
    tmp, _ = ranks
    from prunelimit.runs.io import read_csv
    from prunelimit.train import evaluate

    model = make_net(0)
    with torch.no_grad():
        for name, keep in make_masks().items():
            model.get_parameter(name).mul_(keep)
    expected = evaluate(model, DataLoader(datasets()[1], batch_size=16))["top1"]
    assert float(read_csv(tmp / "full" / "train_log.csv")[0]["Orig Acc"]) == pytest.approx(expected)


def test_distributed_resume_matches_uninterrupted_run(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert r["resumed_from"] == 1
        for k in r0["state"]:
            assert torch.equal(r["resumed_state"][k], r0["state"][k]), k


def test_different_mask_on_one_rank_is_refused_on_every_rank(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert r["mismatch"] is not None and "pruning mask differs between ranks" in r["mismatch"]
