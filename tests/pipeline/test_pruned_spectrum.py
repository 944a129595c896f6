"""`prunelimit spectrum --masks FILE` (the pruned subnetwork's spectrum beside the dense one) and
`spectrum.matrix: gauss_newton` through the pipeline, on the embedded digits default with 2 epochs."""
from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from helpers import cli, one_error
from prunelimit import apply_masks, create_model, global_magnitude_masks, save_masks
from prunelimit.data.digits import digits_dataset
from prunelimit.spectrum import HessianOperator, RestrictedOperator, top_eigenvalues

TINY = ["train.epochs=2", "spectrum.lanczos_iter=12", "spectrum.trace_samples=2", "spectrum.top_k=1",
        "--no-progress"]


def read(path):
    with open(path) as fh:
        return json.load(fh)


def test_spectrum_of_the_kept_weights_beside_the_dense_one(tmp_path, capsys):
    out = tmp_path / "run"
    model = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))
    masks = global_magnitude_masks(model, sparsity=0.7)    # any masks of the model's shape will do
    save_masks(tmp_path / "mask.safetensors", masks)
    assert cli("spectrum", *TINY, "--masks", tmp_path / "mask.safetensors", "--out", out) == 0
    printed = capsys.readouterr().out
    dense, pruned = read(out / "limit" / "spectrum.json"), read(out / "limit" / "spectrum_pruned.json")
    for name in ("density_pruned.csv", "spectral_density_pruned.png", "spectrum.json", "spectral_density.png"):
        assert (out / "limit" / name).is_file()
    biases = 300 + 100 + 10                                   # kept whole: the masks cover the weights
    assert pruned["dim"] == sum(int(m.sum()) for m in masks.values()) + biases
    assert pruned["full_dim"] == dense["dim"] == 50_610 and len(pruned["nodes"]) == 12
    assert "Spectrum before / after pruning" in printed and "kept weights" in printed

    # the same number from the library: the trained weights with the masks applied, the full training split
    trained = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))
    state = torch.load(out / "dense" / "model_final.pth.tar", weights_only=True)
    trained.load_state_dict(state.get("state_dict", state))
    apply_masks(trained, masks)
    data = digits_dataset(train=True)
    x, y = data.tensors if hasattr(data, "tensors") else next(iter(torch.utils.data.DataLoader(data, len(data))))
    op = RestrictedOperator(HessianOperator(trained, nn.functional.cross_entropy, [(x, y)]), masks)
    top, _ = top_eigenvalues(op, 1, seed=0, tol=1e-6)
    assert abs(pruned["top_eigenvalues"][0] - float(top[0])) <= 1e-3 * float(top[0])

    # a rerun loads it; other masks in the same run directory are refused, naming the mask file
    assert cli("spectrum", *TINY, "--masks", tmp_path / "mask.safetensors", "--out", out) == 0
    assert "pruned-subnetwork spectrum: finished earlier" in capsys.readouterr().out
    save_masks(tmp_path / "other.safetensors", global_magnitude_masks(model, sparsity=0.5))
    assert cli("spectrum", *TINY, "--masks", tmp_path / "other.safetensors", "--out", out) == 2
    error = one_error(capsys)
    assert "spectrum_pruned" in error
    from prunelimit.pipeline.stages import file_digest
    old_digest, new_digest = (file_digest(tmp_path / name)[:12] for name in ("mask.safetensors", "other.safetensors"))
    # both files by name beside their hashes, not the hashes alone
    assert (f"inputs.masks: {tmp_path / 'mask.safetensors'} (sha256 {old_digest}...) -> "
            f"{tmp_path / 'other.safetensors'} (sha256 {new_digest}...)") in error, error


def test_mask_files_load_safely_and_must_fit(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("spectrum", *TINY, "--masks", tmp_path / "missing.safetensors", "--out", out) == 2
    assert "missing.safetensors" in one_error(capsys) and not out.exists()   # refused before anything ran
    np.save(tmp_path / "weight_mask.npy", np.zeros(3))        # never unpickled without --allow-pickle
    assert cli("spectrum", *TINY, "--masks", tmp_path / "weight_mask.npy", "--out", out) == 2
    assert "--allow-pickle" in one_error(capsys)
    wrong = {"fc1.weight": torch.ones(5, 5, dtype=torch.bool)}
    save_masks(tmp_path / "wrong.safetensors", wrong)
    assert cli("spectrum", *TINY, "--masks", tmp_path / "wrong.safetensors", "--out", out) == 2
    assert "fc1.weight" in one_error(capsys)


def test_gauss_newton_through_the_pipeline(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("spectrum", *TINY, "spectrum.matrix=gauss_newton", "--out", out) == 0
    assert "Gauss-Newton matrix over 50,610 parameters" in capsys.readouterr().out
    spectrum = read(out / "limit" / "spectrum.json")
    assert spectrum["matrix"] == "gauss_newton"
    assert min(spectrum["nodes"]) > -1e-6 * max(spectrum["nodes"])      # PSD
    assert cli("spectrum", *TINY, "--out", out) == 2                     # the Hessian's is another result
    assert "spectrum.matrix" in one_error(capsys)
    assert cli("spectrum", *TINY, "spectrum.matrix=gauss_newton", "spectrum.basis_device=cpu", "--out", out) == 0
    assert "spectrum: finished earlier" in capsys.readouterr().out      # where the basis lives changes no number
