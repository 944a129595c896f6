"""A shipped config of the limit paper, in its original flat keys, run end to end on a tiny CIFAR-10 written
in the real python-batch format: train with L1 -> sweep -> spectrum -> Hessian rows -> limit."""
from __future__ import annotations

import json
import pickle

import numpy as np

from prunelimit.cli.main import main


def write_tiny_cifar10(root, n_train=100, n_test=40, seed=0):
    """cifar-10-batches-py with five train batches and a test batch; images carry a class-dependent
    colour so a small net can learn something."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, size=n)
        base = (labels[:, None] * 25).astype(np.int64)
        data = np.clip(base + rng.integers(0, 40, size=(n, 3072)), 0, 255).astype(np.uint8)
        return {b"data": data, b"labels": [int(v) for v in labels]}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=2))


def test_fc_cifar10_l1_original_config_end_to_end(tmp_path, capsys):
    write_tiny_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    # FC on CIFAR has 3.9 M weights: keep the Hessian work to a dozen products
    code = main(["run", "FC_CIFAR10_l1", f"data_path={tmp_path / 'data'}", "epoch=2", "batch_size=25",
                 "sparse_epoch=10", "lanczos_iter=6", "spectrum.trace_samples=1", "spectrum.top_k=1",
                 "spectrum.important_eigs=true", "spectrum.row_quantiles=5", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    lim = out / "limit"
    lines = (lim / "result.txt").read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["important ev rate", "predicted maximum pruning ratio",
                                                  "actual maximum pruning ratio", "conventions"]
    result = json.loads((lim / "result.json").read_text())
    # q comes from 5 sampled Hessian rows, so it is a multiple of 0.2
    assert abs(result["important_ev_rate"] * 5 - round(result["important_ev_rate"] * 5)) < 1e-9
    assert (lim / "hessian_rows.csv").exists() and (lim / "hessian_row_norms.png").exists()
    spectrum = json.loads((lim / "spectrum.json").read_text())
    assert spectrum["lanczos_iter"] == 6 and abs(sum(spectrum["weights"]) - 1) < 1e-9
    log = (out / "dense" / "train_log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 epochs
