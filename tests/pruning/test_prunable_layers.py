"""Which parameters are prunable: layer types, tied weights, patterns, wrappers, coverage, meta models."""
import warnings

import pytest
import torch
from torch import nn

import prunelimit as pl
from prunelimit.pruning import prunable_parameters
from prunelimit.pruning.coverage import collapsed_layers, coverage
from prunelimit.pruning.names import canonical_masks, unwrap_model
from prunelimit.pruning.prunable import register_prunable_layer, _LAYER_TYPES
from helpers import TiedLM


class AllConvs(nn.Module):
    """One layer of every default prunable type, plus an embedding and norms that stay out."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv1d(2, 3, 3), nn.Conv2d(2, 3, 3), nn.Conv3d(2, 3, 3)
        self.t1, self.t2, self.t3 = nn.ConvTranspose1d(3, 2, 3), nn.ConvTranspose2d(3, 2, 3), nn.ConvTranspose3d(3, 2, 3)
        self.bil = nn.Bilinear(4, 5, 3)
        self.attn = nn.MultiheadAttention(8, 2)
        self.attn_kv = nn.MultiheadAttention(8, 2, kdim=6, vdim=6)  # separate q/k/v projection weights
        self.emb = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm2d(3)


def test_every_default_layer_type_is_prunable_and_nothing_else():
    names = [n for n, _ in prunable_parameters(AllConvs())]
    assert names == ["c1.weight", "c2.weight", "c3.weight", "t1.weight", "t2.weight", "t3.weight", "bil.weight",
                     "attn.in_proj_weight", "attn.out_proj.weight", "attn_kv.q_proj_weight",
                     "attn_kv.k_proj_weight", "attn_kv.v_proj_weight", "attn_kv.out_proj.weight"]
    cov = coverage(AllConvs())
    assert {x.name for x in cov.left_out} == {"emb.weight"}
    assert "embedding table" in cov.left_out[0].reason and "include=['emb.weight'" in cov.left_out[0].reason


def test_transformers_conv1d_is_recognised_by_name_and_types_can_be_registered():
    Conv1D = type("Conv1D", (nn.Module,), {"__module__": "transformers.pytorch_utils"})
    Custom = type("MyLinear", (nn.Module,), {})
    net = nn.Sequential(Conv1D(), Custom())
    for m in net:
        m.weight = nn.Parameter(torch.randn(4, 3))
        m.bias = nn.Parameter(torch.randn(3))
    assert [n for n, _ in prunable_parameters(net)] == ["0.weight"]
    assert [x.name for x in coverage(net).left_out] == ["1.weight"]
    assert "register_prunable_layer(MyLinear)" in coverage(net).left_out[0].reason
    n_types = len(_LAYER_TYPES)
    try:
        register_prunable_layer("MyLinear")
        assert [n for n, _ in prunable_parameters(net)] == ["0.weight", "1.weight"]
        from prunelimit.spectrum import hessian_parameters
        assert [n for n, _ in hessian_parameters(net)] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    finally:
        del _LAYER_TYPES[n_types:]
    with pytest.raises(ValueError, match="layer_type must be"):
        register_prunable_layer(3)


def test_tied_embedding_stays_out_by_default_and_is_one_parameter_when_included():
    net = TiedLM()
    assert [n for n, _ in prunable_parameters(net)] == ["fc.weight"]
    cov = coverage(net)
    assert cov.left_out[0].name == "wte.weight" and "tied weight shared by Embedding wte, Linear head" in \
        cov.left_out[0].reason
    # opted in by either of its names (parameter-name patterns), or by module name: one parameter
    for pattern in ("wte.weight", "head.weight", "head", "wte"):
        assert [n for n, _ in prunable_parameters(net, include=[pattern])] == ["wte.weight"], pattern
    masks = pl.global_magnitude_masks(net, 0.5, include=["fc", "head"])
    assert list(masks) == ["wte.weight", "fc.weight"]  # named_parameters() order
    # every entry point accepts either name
    aliased = {"head.weight": masks["wte.weight"], "fc.weight": masks["fc.weight"]}
    pl.apply_masks(net, aliased)
    assert int((net.head.weight == 0).sum()) == int((~masks["wte.weight"]).sum())
    assert list(canonical_masks(net, aliased)) == ["wte.weight", "fc.weight"]
    bad = dict(aliased, **{"wte.weight": ~masks["wte.weight"]})
    with pytest.raises(ValueError, match="two different masks for the tied parameter 'wte.weight'"):
        pl.apply_masks(net, bad)
    enforcer = pl.MaskEnforcer(net, aliased)
    assert sorted(enforcer.masks) == ["fc.weight", "wte.weight"]


def test_patterns_on_parameter_names_and_exclusion():
    net = AllConvs()
    assert [n for n, _ in prunable_parameters(net, include=["*.in_proj_weight", "emb.weight"])] == \
        ["attn.in_proj_weight", "emb.weight"]
    assert [n for n, _ in prunable_parameters(net, include=["attn"])] == ["attn.in_proj_weight"]
    left = [n for n, _ in prunable_parameters(net, exclude=["*_proj_weight", "t?", "attn*.out_proj"])]
    assert left == ["c1.weight", "c2.weight", "c3.weight", "bil.weight"]
    cov = coverage(net, exclude=["c3"])
    assert any(x.name == "c3.weight" and "excluded by exclude=['c3']" in x.reason for x in cov.left_out)
    with pytest.raises(ValueError, match="no prunable parameters left.*parameter names such as"):
        prunable_parameters(net, include=["nothing*"])


def test_wrapped_and_plain_models_share_names_masks_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    wrapped = [nn.DataParallel(net), torch.compile(net), nn.DataParallel(torch.compile(net))]
    plain_masks = pl.global_magnitude_masks(net, 0.6)
    for w in wrapped:
        assert unwrap_model(w) is net
        assert [n for n, _ in prunable_parameters(w)] == ["0.weight", "2.weight"]
        masks = pl.global_magnitude_masks(w, 0.6)
        assert list(masks) == list(plain_masks) and all(torch.equal(masks[k], plain_masks[k]) for k in masks)
        prefixed = {f"module._orig_mod.{k}": v for k, v in masks.items()}
        pl.apply_masks(w, prefixed)  # wrapper-prefixed keys on a wrapped model
        pl.apply_masks(net, prefixed)  # ... and on the plain one
        pl.check_masks_fit(w, prefixed)
    path = tmp_path / "m.safetensors"
    pl.save_masks(path, plain_masks)
    pl.apply_masks(wrapped[2], pl.load_masks(path))
    from prunelimit.runs.checkpoint import load_model_weights
    torch.save({"state_dict": wrapped[1].state_dict()}, tmp_path / "c.pth")  # keys carry _orig_mod.
    other = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    load_model_weights(nn.DataParallel(other), tmp_path / "c.pth")
    assert torch.equal(other[0].weight, net[0].weight)


def test_meta_model_error_and_shape_only_coverage():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    with pytest.raises(ValueError, match=r"on the meta device \(parameter '0.weight'.*to_empty"):
        pl.global_magnitude_masks(net, 0.5)
    assert coverage(net).fraction == 1.0 and coverage(net).prunable_weights == 56


def test_layer_collapse_is_named():
    net = nn.Sequential(nn.Linear(50, 50), nn.Linear(50, 2))
    with torch.no_grad():
        net[1].weight.fill_(1e-6)
    with pytest.warns(UserWarning, match=r"prunes 1 layer\(s\) entirely \(layer collapse.*: 1.weight"):
        masks = pl.global_magnitude_masks(net, 0.1)
    assert collapsed_layers(masks) == ["1.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pl.global_magnitude_masks(net, 0.01)  # 25 of the 100 smallest: no collapse, no warning


def test_coverage_warns_about_large_skipped_matrices():
    net = TiedLM()
    cov = coverage(net)
    assert cov.matrix_weights == 66 + 36 and cov.covered_matrix_weights == 36
    assert cov.fraction == pytest.approx(36 / 102)
    text = cov.format()
    assert "warning: wte.weight [11, 6] (66 weights, 64.7 % of all) is not pruned" in text
    assert pl.coverage is not None and pl.coverage(net).fraction == cov.fraction


def test_ddp_wrapped_model_uses_plain_names(tmp_path):
    import torch.distributed as tdist
    if tdist.is_initialized():
        pytest.skip("a process group is already active in this process")
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(5)
        net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        ddp = nn.parallel.DistributedDataParallel(net)
        masks = pl.global_magnitude_masks(ddp, 0.5)
        assert list(masks) == ["0.weight", "2.weight"]
        pl.apply_masks(ddp, {f"module.{k}": v for k, v in masks.items()})
        assert pl.pruning.count_nonzero_pruned(net, masks) == 0
        from prunelimit.spectrum import hessian_parameters
        assert [n for n, _ in hessian_parameters(ddp)] == \
            ["0.weight", "0.bias", "2.weight", "2.bias"]
    finally:
        tdist.destroy_process_group()
