"""Mask files (safetensors, no pickle), fitting masks to models, applying them, statistics, and the
opt-in reader for the original pickled weight_mask.npy."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.serialization
from safetensors.torch import save_file
from torch import nn

from prunelimit.pruning import (apply_masks, check_masks_fit, global_magnitude_masks, load_legacy_mask_npy,
                                load_masks, mask_file_metadata, mask_sparsity, masks_sparsity_of_model, save_masks)


def net(seed=0, hidden=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, hidden), nn.ReLU(),
                         nn.Linear(hidden, 3))


def random_masks(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.4
            for n, p in model.named_parameters() if n.endswith("weight")}


# --------------------------------------------------------------------------- safetensors mask files
def test_roundtrip_with_metadata(tmp_path):
    model = net()
    masks = global_magnitude_masks(model, 0.8)
    path = save_masks(tmp_path / "sub" / "weight_mask.safetensors", masks, metadata={"sparsity": "0.8"})
    assert path.exists() and os.listdir(path.parent) == ["weight_mask.safetensors"]  # no temp file left
    back = load_masks(path)
    assert list(back) == list(masks)
    for n in masks:
        assert back[n].dtype == torch.bool and torch.equal(back[n], masks[n])
    assert mask_file_metadata(path) == {"sparsity": "0.8"}
    check_masks_fit(model, back, str(path))
    with open(path, "rb") as f:  # a safetensors file: 8-byte header length then JSON, never a pickle
        header_len = int.from_bytes(f.read(8), "little")
        assert f.read(1) == b"{" and header_len < os.path.getsize(path)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_masks(tmp_path / "nope.safetensors")
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00\x01 not a safetensors file" * 3)
    with pytest.raises(ValueError, match=r"garbage\.safetensors.*not a readable safetensors"):
        load_masks(bad)
    truncated = tmp_path / "truncated.safetensors"
    save_masks(truncated, random_masks(net()))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        load_masks(truncated)
    floats = tmp_path / "floats.safetensors"
    save_file({"0.weight": torch.ones(4, 1, 3, 3)}, str(floats))
    with pytest.raises(ValueError, match="non-bool"):
        load_masks(floats)
    with pytest.raises(ValueError, match="does not exist"):
        mask_file_metadata(tmp_path / "nope.safetensors")


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dtype torch.float32"):
        save_masks(tmp_path / "m.safetensors", {"0.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="metadata.*'sparsity': float"):
        save_masks(tmp_path / "m.safetensors", {"0.weight": torch.ones(3, dtype=torch.bool)},
                   metadata={"sparsity": 0.9})
    assert not (tmp_path / "m.safetensors").exists()


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    import prunelimit.pruning.masks as masks_module

    monkeypatch.setattr(masks_module, "is_main", lambda: False)
    assert save_masks(tmp_path / "m.safetensors", random_masks(net())) is None
    assert not (tmp_path / "m.safetensors").exists()


def test_masks_for_another_model_are_rejected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_masks(path, random_masks(net(hidden=16)))
    masks = load_masks(path)
    with pytest.raises(ValueError, match=r"m\.safetensors was made for another model.*2\.weight: mask \(16, 144\)"):
        check_masks_fit(net(hidden=8), masks, str(path))
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError,
                       match=r"2 key.*not parameters of the model, e.g. 2.weight, 4.weight; 1 shape mismatch.*0.weight"):
        check_masks_fit(other, masks, str(path))
    partial = {k: v for k, v in masks.items() if k != "4.weight"}
    with pytest.raises(ValueError, match="1 prunable parameter.*without a mask, e.g. 4.weight"):
        check_masks_fit(net(), partial)
    check_masks_fit(net(), partial, exclude=["4"])  # made with the same exclude: fits
    with pytest.raises(ValueError, match="not bool"):
        check_masks_fit(net(), {k: v.float() for k, v in masks.items()})


# --------------------------------------------------------------------------- apply / statistics
def test_apply_masks_zeroes_exactly_the_pruned():
    model = net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model)
    assert apply_masks(model, masks) is model
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.equal(p.detach(), torch.where(masks[n], before[n], torch.zeros_like(before[n])))
        else:
            assert torch.equal(p.detach(), before[n])  # biases untouched
    assert not any(p.requires_grad is False for p in model.parameters())


def test_apply_masks_errors_and_wrappers():
    model = net()
    with pytest.raises(ValueError, match="mask key 'fc.weight' is not a parameter"):
        apply_masks(model, {"fc.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask '2.weight' is torch.bool \(3,\).*\(16, 144\)"):
        apply_masks(model, {"2.weight": torch.ones(3, dtype=torch.bool)})
    masks = random_masks(model)
    apply_masks(nn.DataParallel(model), masks)  # the "module." prefix never appears in mask keys
    assert (model[2].weight[~masks["2.weight"]] == 0).all()


def test_mask_statistics():
    model = net()
    masks = random_masks(model)
    stats = mask_sparsity(masks)
    sizes = {n: m.numel() for n, m in masks.items()}
    pruned = {n: int((~m).sum()) for n, m in masks.items()}
    assert stats.total == sum(sizes.values()) and stats.pruned == sum(pruned.values())
    assert stats.sparsity == pytest.approx(stats.pruned / stats.total)
    assert stats.keep_fraction == pytest.approx(1 - stats.sparsity)
    assert [(s.name, s.n, s.pruned) for s in stats.layers] == [(n, sizes[n], pruned[n]) for n in masks]
    apply_masks(model, masks)
    assert masks_sparsity_of_model(model) == pytest.approx(stats.sparsity)


# --------------------------------------------------------------------------- legacy weight_mask.npy
def write_legacy_npy(path, tensors, monkeypatch, location="cuda:0"):
    """Write masks the way the original did: np.save of an object array of GPU tensors. The GPU is
    faked by tagging the pickled storages with a CUDA location, which is what a real GPU run records."""
    arr = np.empty(len(tensors), dtype=object)
    for i, t in enumerate(tensors):
        arr[i] = t
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: location)
        np.save(path, arr, allow_pickle=True)


def test_legacy_npy_needs_the_opt_in(tmp_path, monkeypatch):
    model = net()
    path = tmp_path / "weight_mask.npy"
    write_legacy_npy(path, [m.float() for m in random_masks(model).values()], monkeypatch)
    with pytest.raises(ValueError, match=r"weight_mask\.npy.*pickle.*arbitrary code.*--allow-pickle"):
        load_legacy_mask_npy(path, model)


def test_legacy_npy_loads_cuda_tensors_on_cpu(tmp_path, monkeypatch):
    model = net()
    masks = random_masks(model)
    path = tmp_path / "weight_mask.npy"
    write_legacy_npy(path, [m.float() for m in masks.values()], monkeypatch)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # what plain np.load does on a CPU machine
            np.load(path, allow_pickle=True)
    back = load_legacy_mask_npy(path, model, allow_pickle=True)
    assert list(back) == list(masks)
    for n in masks:
        assert back[n].dtype == torch.bool and back[n].device.type == "cpu" and torch.equal(back[n], masks[n])
    check_masks_fit(model, back)


def test_legacy_npy_bool_tensors_and_numpy_arrays(tmp_path, monkeypatch):
    model = net()
    masks = random_masks(model)
    path = tmp_path / "bool.npy"
    write_legacy_npy(path, list(masks.values()), monkeypatch, location="cpu")
    assert all(torch.equal(a, b) for a, b in zip(load_legacy_mask_npy(path, model, allow_pickle=True).values(),
                                                 masks.values()))
    path = tmp_path / "arrays.npy"
    write_legacy_npy(path, [m.numpy().astype(np.float32) for m in masks.values()], monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(load_legacy_mask_npy(path, model, allow_pickle=True).values(),
                                                 masks.values()))


def test_legacy_npy_for_another_model(tmp_path, monkeypatch):
    masks = random_masks(net(hidden=16))
    path = tmp_path / "weight_mask.npy"
    write_legacy_npy(path, [m.float() for m in masks.values()], monkeypatch)
    with pytest.raises(ValueError, match=r"mask #1 has shape \(16, 144\) but parameter '2.weight' has \(8, 144\)"):
        load_legacy_mask_npy(path, net(hidden=8), allow_pickle=True)
    with pytest.raises(ValueError, match="holds 3 masks but Sequential has 2 prunable"):
        load_legacy_mask_npy(path, nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), allow_pickle=True)
    bad = tmp_path / "broken.npy"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"broken\.npy' cannot be read"):
        load_legacy_mask_npy(bad, net(), allow_pickle=True)
    with pytest.raises(ValueError, match="does not exist"):
        load_legacy_mask_npy(tmp_path / "missing.npy", net(), allow_pickle=True)
