"""Which parameters the Hessian operators differentiate: the default set (the paper's convention) says
what it leaves out, params="all" is the Hessian over every trainable parameter, plain parameters are
named from the model, and RestrictedOperator takes either name of a tied tensor."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import helpers
from prunelimit import global_magnitude_masks
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import GaussNewtonOperator, HessianOperator, RestrictedOperator, hessian_row_norms


def bn_mlp() -> nn.Sequential:
    """Linear -> BatchNorm -> Tanh -> Linear (float64) with non-trivial running statistics."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.3, 0.3)
        net.train()
        net(torch.randn(64, 5, dtype=torch.float64) * 2 + 1)   # running mean / var away from 0 / 1
    return net


def batches_for(net_inputs: int = 5, classes: int = 3):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(10, net_inputs, generator=gen, dtype=torch.float64), torch.randint(0, classes, (10,), generator=gen))
            for _ in range(2)]


def default_set_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "default parameter set" in str(w.message)]


@pytest.mark.parametrize("operator", [HessianOperator, GaussNewtonOperator])
def test_the_default_set_leaves_the_norm_layer_out_and_says_so_once(operator):
    net, batches = bn_mlp(), batches_for()
    linear = sum(p.numel() for m in (net[0], net[3]) for p in m.parameters())   # 5*8+8 + 8*3+3 = 75
    every = sum(p.numel() for p in net.parameters())                            # + 16 BatchNorm = 91
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        op = operator(net, nn.functional.cross_entropy, batches)
    said = default_set_warnings(record)
    assert len(said) == 1 and record[0].category is UserWarning and record[0].filename == __file__
    assert f"covers {linear:,} of {every:,} trainable parameters" in said[0]
    assert "left out: 16 in 1 norm layer " in said[0] and "params='all'" in said[0]
    assert op.dim == linear and op.trainable_numel == every
    assert op.left_out == ["1.weight", "1.bias"] and op.left_out_summary == "16 in 1 norm layer"

    # a set the caller chose is taken as meant: no warning, and left_out still says what is outside it
    for params in ("prunable", list(net.named_parameters())[:2], "all"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            chosen = operator(net, nn.functional.cross_entropy, batches, params=params)
        assert default_set_warnings(record) == []
        assert chosen.dim + sum(p.numel() for n, p in net.named_parameters() if n in chosen.left_out) == every
    assert chosen.dim == every and chosen.left_out == [] and chosen.left_out_summary == ""


def test_params_all_is_the_hessian_over_every_parameter():
    net, batches = bn_mlp(), batches_for()
    op = HessianOperator(net, nn.functional.cross_entropy, batches, params="all")
    H_op = op.matmat(torch.eye(op.dim, dtype=torch.float64))              # column by column: H is symmetric
    H, _ = helpers.explicit_hessian(net, batches)                          # torch.autograd.functional.hessian
    assert op.param_names == [n for n, _ in net.named_parameters()]
    torch.testing.assert_close(H_op, H, rtol=1e-9, atol=1e-11)
    # the norm layer's rows are not zero: leaving it out changes the spectrum, not just its size
    norm = slice(48, 64)                                                   # after 0.weight (40) and 0.bias (8)
    assert H[norm].abs().max() > 1e-3
    with pytest.warns(UserWarning, match="default parameter set"):
        default = HessianOperator(net, nn.functional.cross_entropy, batches)
    keep = torch.ones(op.dim, dtype=torch.bool)
    keep[norm] = False
    H_default = default.matmat(torch.eye(default.dim, dtype=torch.float64))
    torch.testing.assert_close(H_default, H[keep][:, keep], rtol=1e-9, atol=1e-11)
    assert not torch.allclose(torch.linalg.eigvalsh(H_default)[-1], torch.linalg.eigvalsh(H)[-1], rtol=1e-3)


def test_plain_parameters_are_named_from_the_model_and_anything_else_is_one_line_error():
    net, batches = bn_mlp(), batches_for()
    plain = HessianOperator(net, nn.functional.cross_entropy, batches, params=list(net.parameters()))
    assert plain.param_names == [n for n, _ in net.named_parameters()]
    subset = HessianOperator(net, nn.functional.cross_entropy, batches, params=[net[3].weight, net[1].bias])
    assert subset.param_names == ["3.weight", "1.bias"] and subset.dim == 24 + 8
    v = torch.randn(plain.dim, dtype=torch.float64)
    named = HessianOperator(net, nn.functional.cross_entropy, batches, params=list(net.named_parameters()))
    torch.testing.assert_close(plain.matvec(v), named.matvec(v), rtol=0, atol=0)

    stray = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(PrunelimitError, match=r"not a parameter of Sequential; pass params=list\(model.named_par"):
        HessianOperator(net, nn.functional.cross_entropy, batches, params=[net[0].weight, stray])
    for bad in (["0.weight"], [("0.weight",)], [(net[0].weight, "0.weight")]):
        with pytest.raises(PrunelimitError, match=r"params entry 0 is .*params=list\(model.named_parameters\(\)\)") as err:
            HessianOperator(net, nn.functional.cross_entropy, batches, params=bad)
        assert "\n" not in str(err.value)
    with pytest.raises(PrunelimitError, match=r"params='every' is not one of \('prunable', 'all'\)"):
        HessianOperator(net, nn.functional.cross_entropy, batches, params="every")
    for bad in (5, net[0].weight):
        with pytest.raises(PrunelimitError, match=r"is not a list; pass params=list\(model.named_parameters\(\)\)"):
            HessianOperator(net, nn.functional.cross_entropy, batches, params=bad)
    as_dict = HessianOperator(net, nn.functional.cross_entropy, batches, params=dict(net.named_parameters()))
    assert as_dict.param_names == plain.param_names


class TiedNormLM(helpers.TiedLM):
    """TiedLM (wte embedding 11x6, fc 6x6, head tied to wte) plus a LayerNorm and a raw parameter."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(6)
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, ids):
        return self.head(self.norm(torch.relu(self.fc(self.wte(ids)))) * self.scale)


def test_left_out_parameters_are_counted_by_kind():
    torch.manual_seed(0)
    model = TiedNormLM().double()
    ids = torch.randint(0, 11, (8,))
    with pytest.warns(UserWarning) as record:
        op = HessianOperator(model, nn.functional.cross_entropy, [(ids, ids)])
    assert op.param_names == ["fc.weight", "fc.bias"]
    assert sorted(op.left_out) == ["norm.bias", "norm.weight", "scale", "wte.weight"]
    expected = "12 in 1 norm layer, 66 in 1 weight tied to an embedding, 6 in 1 other tensor"
    assert op.left_out_summary == expected and expected in str(record[0].message)
    assert op.trainable_numel == 42 + 12 + 66 + 6


def test_restricted_operator_takes_either_name_of_a_tied_tensor():
    torch.manual_seed(0)
    model = helpers.TiedLM().double()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 11, (12,), generator=gen)
    op = HessianOperator(model, nn.functional.cross_entropy, [(ids, ids)], params="all")
    assert op.param_names == ["wte.weight", "fc.weight", "fc.bias"]          # the tied tensor once
    keep = torch.rand(11, 6, generator=gen) > 0.4
    by_alias, by_name = RestrictedOperator(op, {"head.weight": keep}), RestrictedOperator(op, {"wte.weight": keep})
    assert by_alias.dim == by_name.dim == int(keep.sum()) + 42
    H = op.matmat(torch.eye(op.dim, dtype=torch.float64))
    kept = torch.cat([keep.reshape(-1), torch.ones(42, dtype=torch.bool)])
    V = torch.randn(2, by_alias.dim, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(by_alias.matmat(V), V @ H[kept][:, kept], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(by_alias.matmat(V), by_name.matmat(V), rtol=0, atol=0)
    assert RestrictedOperator(op, {"head.weight": keep, "wte.weight": keep}).dim == by_name.dim
    with pytest.raises(PrunelimitError, match="two different masks for the tied parameter 'wte.weight'"):
        RestrictedOperator(op, {"head.weight": keep, "wte.weight": ~keep})


def test_a_mask_on_a_left_out_parameter_says_why_and_how_to_include_it():
    torch.manual_seed(0)
    model = helpers.TiedLM().double()
    ids = torch.randint(0, 11, (12,))
    with pytest.warns(UserWarning, match="66 in 1 weight tied to an embedding"):
        op = HessianOperator(model, nn.functional.cross_entropy, [(ids, ids)])
    masks = global_magnitude_masks(model, 0.5, include=["fc", "head.weight"])  # the tied table under 'wte.weight'
    assert set(masks) == {"fc.weight", "wte.weight"}
    for key in ("wte.weight", "head.weight"):
        with pytest.raises(PrunelimitError) as err:
            RestrictedOperator(op, {key: masks["wte.weight"], "fc.weight": masks["fc.weight"]})
        text = str(err.value)
        assert f"mask key {key!r} names a parameter the Hessian operator does not cover" in text
        assert "a weight tied to an embedding table" in text and "params='all'" in text
        assert "spectrum.parameters=all" in text and "\n" not in text
    net = bn_mlp()
    with pytest.warns(UserWarning):
        bn_op = HessianOperator(net, nn.functional.cross_entropy, batches_for())
    with pytest.raises(PrunelimitError, match="'1.weight' names .* a norm-layer parameter"):
        RestrictedOperator(bn_op, {"1.weight": torch.ones(8, dtype=torch.bool)})
    with pytest.raises(PrunelimitError, match=r"mask keys \['fc.weight'\] are not parameters"):
        RestrictedOperator(bn_op, {"fc.weight": torch.ones(3, 8, dtype=torch.bool)})


def test_masked_spectrum_over_all_parameters_keeps_the_norm_layer_whole():
    net, batches = bn_mlp(), batches_for()
    op = HessianOperator(net, nn.functional.cross_entropy, batches, params="all")
    masks = global_magnitude_masks(net, 0.5)                                # the two Linear weights
    assert set(masks) == {"0.weight", "3.weight"}
    sub = RestrictedOperator(op, masks)
    parts = [masks[n].reshape(-1) if n in masks else torch.ones(p.numel(), dtype=torch.bool)
             for n, p in net.named_parameters()]
    kept = torch.cat(parts)
    assert sub.dim == int(masks["0.weight"].sum() + masks["3.weight"].sum()) + 8 + 16 + 3
    H, _ = helpers.explicit_hessian(net, batches)
    V = torch.randn(3, sub.dim, dtype=torch.float64)
    torch.testing.assert_close(sub.matmat(V), V @ H[kept][:, kept], rtol=1e-9, atol=1e-11)


def test_hessian_rows_of_a_norm_weight_need_params_all_and_then_match_the_explicit_hessian():
    net, batches = bn_mlp(), batches_for()
    with pytest.warns(UserWarning):
        default = HessianOperator(net, nn.functional.cross_entropy, batches)
    # include="1" opts the BatchNorm's weight into the prunable set; the default operator does not cover it
    with pytest.raises(PrunelimitError, match="'1.weight' is not among .* a norm-layer parameter.*params='all'"):
        hessian_row_norms(default, net, quantiles=4, include=["1", "3"])
    op = HessianOperator(net, nn.functional.cross_entropy, batches, params="all")
    res = hessian_row_norms(op, net, quantiles=4, include=["1", "3"])
    H, _ = helpers.explicit_hessian(net, batches)
    torch.testing.assert_close(res.row_l1, H[res.coordinate].abs().sum(dim=1), rtol=1e-9, atol=1e-12)
    assert {n for n in res.param_name} <= {"1.weight", "3.weight"}
    names = [n for n, _ in net.named_parameters()]
    starts = dict(zip(names, torch.tensor([0] + [p.numel() for p in net.parameters()]).cumsum(0).tolist()))
    for name, index, coord in zip(res.param_name, res.index.tolist(), res.coordinate.tolist()):
        assert coord == starts[name] + index                       # the operator's flat order is the model's
