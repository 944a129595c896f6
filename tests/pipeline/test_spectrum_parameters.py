"""``spectrum.parameters`` through the CLI on the digits data with the BatchNorm ``tiny_cnn`` (1 epoch, 8
Lanczos steps): the spectrum line names what the paper's parameter set leaves out, ``all`` takes every
trainable parameter (a finished spectrum of the other set is refused), and the pruned-subnetwork
spectrum over all parameters keeps the norm layers whole."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import cli, one_error
from prunelimit import create_model, global_magnitude_masks, save_masks
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline.pruned_spectrum import _operator_masks
from prunelimit.spectrum import HessianOperator

TINY = ["model.name=tiny_cnn", "train.epochs=1", "data.use_full_data=false", "spectrum.lanczos_iter=8", "spectrum.top_k=1",
        "spectrum.trace_samples=0", "--no-progress"]


def counts():
    """(all trainable parameters, those in BatchNorm layers, BatchNorm layers) of tiny_cnn on digits."""
    model = create_model("tiny_cnn", num_classes=10, input_shape=(1, 8, 8))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return (sum(p.numel() for p in model.parameters()), sum(p.numel() for m in norms for p in m.parameters()),
            len(norms))


def spectrum_json(run, name="spectrum.json"):
    return json.loads((run / "limit" / name).read_text())


def test_the_spectrum_line_names_the_left_out_norm_layers_and_all_includes_them(tmp_path, capsys, recwarn):
    total, in_norms, norms = counts()                       # 1,442 = 1,394 conv/linear + 48 in 2 BatchNorms
    prunable = tmp_path / "prunable"
    assert cli("spectrum", *TINY, "--out", prunable) == 0
    said = capsys.readouterr().out
    assert (f"spectrum: Hessian over {total - in_norms:,} of {total:,} trainable parameters (left out: "
            f"{in_norms:,} in {norms} norm layers; the paper's convention; spectrum.parameters=all includes them)"
            in said), said
    assert spectrum_json(prunable)["dim"] == total - in_norms and "parameters" not in spectrum_json(prunable)
    assert not [w for w in recwarn if "default parameter set" in str(w.message)]   # the line says it instead

    everything = tmp_path / "all"
    assert cli("spectrum", *TINY, "spectrum.parameters=all", "spectrum.important_eigs=true",
               "spectrum.row_quantiles=4", "--out", everything) == 0
    said = capsys.readouterr().out
    assert f"spectrum: Hessian over {total:,} parameters (every trainable one)" in said, said
    assert spectrum_json(everything)["dim"] == total and spectrum_json(everything)["parameters"] == "all"
    assert "important eigenvalues: " in said and "of 4 sampled Hessian rows are flat" in said

    # a number-changing key: the finished spectrum of the other set is refused, not reused
    assert cli("spectrum", *TINY, "spectrum.parameters=all", "--out", prunable) == 2
    assert "spectrum.parameters: 'prunable' -> 'all'" in one_error(capsys)
    assert cli("spectrum", *TINY, "spectrum.parameters=everything", "--out", tmp_path / "bad") == 2
    assert "spectrum.parameters='everything' is not one of ('prunable', 'all')" in one_error(capsys)
    assert not (tmp_path / "bad").exists()


def test_pruned_spectrum_over_all_parameters_keeps_the_norm_layers_whole(tmp_path, capsys):
    total, in_norms, _ = counts()
    model = create_model("tiny_cnn", num_classes=10, input_shape=(1, 8, 8))
    masks = global_magnitude_masks(model, sparsity=0.6)     # conv1, conv2, fc weights
    save_masks(tmp_path / "mask.safetensors", masks)
    out = tmp_path / "run"
    assert cli("spectrum", *TINY, "spectrum.parameters=all", "--masks", tmp_path / "mask.safetensors",
               "--out", out) == 0
    said = capsys.readouterr().out
    pruned = spectrum_json(out, "spectrum_pruned.json")
    kept = sum(int(m.sum()) for m in masks.values())
    assert pruned["full_dim"] == total and pruned["dim"] == kept + 10 + in_norms   # + fc.bias + BatchNorms
    assert f"Hessian over {pruned['dim']:,} kept (of {total:,}) parameters (every trainable one)" in said, said


def test_a_spectrum_mask_on_a_left_out_parameter_names_the_key_that_includes_it():
    model = create_model("tiny_cnn", num_classes=10, input_shape=(1, 8, 8))
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    op = HessianOperator(model, torch.nn.functional.cross_entropy, batches, params="prunable")
    masks = {"bn1.weight": torch.ones(8, dtype=torch.bool)}
    with pytest.raises(PrunelimitError) as err:
        _operator_masks(op, model, masks)
    assert "'bn1.weight' is a norm-layer parameter" in str(err.value)
    assert "set spectrum.parameters=all to include it" in str(err.value)
    every = HessianOperator(model, torch.nn.functional.cross_entropy, batches, params="all")
    assert set(_operator_masks(every, model, masks)) == {"bn1.weight"}
