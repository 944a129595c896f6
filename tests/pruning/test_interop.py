"""torch.nn.utils.prune round trips, the sparsity report (MACs by hand), the compressed export."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import prunelimit as pl
from prunelimit.pruning.report import _pack, _unpack
from helpers import TiedLM


def test_torch_prune_round_trip_both_ways_tied_included():
    torch.manual_seed(0)
    net = TiedLM()
    masks = pl.global_magnitude_masks(net, 0.5, include=["fc", "head"])
    ids = torch.randint(0, 11, (2, 4))
    ref = copy.deepcopy(net)
    pl.apply_masks(ref, masks)
    pl.to_torch_prune(net, masks)
    assert hasattr(net.fc, "weight_orig") and torch.equal(net.fc.weight_mask.bool(), masks["fc.weight"])
    assert torch.equal(net.wte.weight, ref.wte.weight) and torch.equal(net.head.weight, ref.head.weight)
    assert torch.equal(net(ids), ref(ids))
    with pytest.raises(pl.errors.PrunelimitError, match=r"reparametrised by torch.nn.utils.prune \(wte.weight_orig"
                       r".*from_torch_prune"):
        pl.global_magnitude_masks(net, 0.5)
    back = pl.from_torch_prune(net)
    assert sorted(back) == ["fc.weight", "wte.weight"] and all(torch.equal(back[k], masks[k]) for k in back)
    got, want = dict(net.named_parameters()), dict(ref.named_parameters())
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert net.head.weight is net.wte.weight  # still tied


def test_from_torch_prune_reads_a_users_l1_unstructured_pruning():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    prune.global_unstructured([(net[0], "weight"), (net[2], "weight")], prune.L1Unstructured, amount=10)
    prune.l1_unstructured(net[2], "weight", amount=3)  # a second round: a PruningContainer
    expected = {"0.weight": net[0].weight_mask.bool(), "2.weight": net[2].weight_mask.bool()}
    masks = pl.from_torch_prune(net, remove=False)
    assert all(torch.equal(masks[k], expected[k]) for k in expected) and hasattr(net[0], "weight_orig")
    masks = pl.from_torch_prune(net)
    assert pl.mask_sparsity(masks).pruned == 13 and pl.pruning.count_nonzero_pruned(net, masks) == 0
    with pytest.raises(pl.errors.PrunelimitError, match="carries no torch.nn.utils.prune masks"):
        pl.from_torch_prune(net)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.up = nn.ConvTranspose1d(4, 2, 3)  # 16 -> 18
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.fc = nn.Linear(6, 5)

    def forward(self, x, tokens):
        h = self.up(self.conv(x).flatten(2))  # (1, 2, 18)
        a, _ = self.attn(tokens, tokens, tokens, need_weights=False)  # (1, 7, 6)
        return self.fc(a).sum() + h.sum()


def test_sparsity_report_counts_macs_by_hand():
    torch.manual_seed(2)
    net = Mixed()
    masks = pl.global_magnitude_masks(net, 0.7)
    x, tokens = torch.randn(1, 3, 8, 8), torch.randn(1, 7, 6)
    rep = pl.sparsity_report(net, masks, (x, tokens))
    by = {r.name: r for r in rep.layers}
    kept = {k: int(m.sum()) for k, m in masks.items()}
    assert by["conv.weight"].dense_macs == 108 * 16 and by["conv.weight"].sparse_macs == kept["conv.weight"] * 16
    assert by["up.weight"].dense_macs == 24 * 16  # every input position meets every weight
    assert by["attn.in_proj_weight"].dense_macs == 108 * 7
    assert by["attn.out_proj.weight"].dense_macs == 36 * 7 and by["fc.weight"].dense_macs == 30 * 7
    assert rep.dense_macs == sum(r.dense_macs for r in rep.layers)
    assert rep.sparse_macs == sum(kept[k] * {"conv.weight": 16, "up.weight": 16}.get(k, 7) for k in kept)
    assert rep.speedup == pytest.approx(rep.dense_macs / rep.sparse_macs)
    total = sum(p.numel() for p in net.parameters())
    assert rep.params == total and rep.nonzeros == total - pl.mask_sparsity(masks).pruned
    assert rep.bytes_dense == 4 * total
    assert rep.bytes_compressed == 4 * rep.nonzeros + sum((m.numel() + 7) // 8 for m in masks.values())
    assert "theoretical speed-up" in rep.format()
    with pytest.raises(pl.errors.PrunelimitError, match="ONE example"):
        pl.sparsity_report(net, masks, (torch.randn(2, 3, 8, 8), torch.randn(2, 7, 6)))


def test_compressed_export_loads_back_exactly(tmp_path):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 13)).double()
    net(torch.randn(4, 3, 8, 8, dtype=torch.float64))  # batch-norm statistics are buffers to round-trip
    masks = pl.global_magnitude_masks(net, 0.9)
    pl.apply_masks(net, masks)
    path = tmp_path / "pruned.safetensors"
    pl.save_compressed(path, nn.DataParallel(net), masks)
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 13)).double()
    pl.load_compressed(path, fresh)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values()))
    dense_path = tmp_path / "dense.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, dense_path)
    assert path.stat().st_size < 0.3 * dense_path.stat().st_size
    with pytest.raises(pl.errors.PrunelimitError, match="not a compressed weights file"):
        pl.load_compressed(dense_path, fresh)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_bit_packing_round_trip(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = _pack(mask)
    assert packed.numel() == (n + 7) // 8 and torch.equal(_unpack(packed, n), mask)


def test_sparsity_report_counts_weights_used_through_functional_calls():
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(4)
    net = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
                          num_classes=3)
    masks = pl.global_magnitude_masks(net, 0.5)
    rep = pl.sparsity_report(net, masks, torch.randn(1, 3, 32, 32))
    by = {r.name: r for r in rep.layers}
    assert all(r.dense_macs is not None for r in rep.layers)
    # F.linear(x, qkv.weight) inside the shifted-window attention: 8x8 tokens after the 4x4 patches
    qkv = by["features.1.0.attn.qkv.weight"]
    assert qkv.dense_macs == 48 * 16 * 64 and qkv.sparse_macs == int(masks["features.1.0.attn.qkv.weight"].sum()) * 64
