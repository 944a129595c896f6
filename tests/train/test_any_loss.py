"""Batches of any layout, raw outputs, user losses and metrics; Hessian fallbacks and errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelimit as pl
from prunelimit.train.batches import batch_size, call_model, logits_of


class DictModel(nn.Module):
    """Keyword inputs, a dict output with 'logits' (like a transformers ModelOutput)."""

    def __init__(self, vocab=7):
        super().__init__()
        self.emb = nn.Embedding(vocab, 5)
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = torch.tanh(self.fc(self.emb(input_ids)))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return {"logits": self.out(h), "hidden": h}


def lm_batches(seed=0, n=3, batch=(2, 3, 2), length=5, vocab=7):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in batch[:n]:
        ids = torch.randint(0, vocab, (b, length), generator=gen)
        out.append(({"input_ids": ids, "attention_mask": torch.ones(b, length)}, ids))
    return out


def manual_lm_loss(model, batches):
    """Size-weighted mean next-token cross-entropy, written out by hand."""
    total, count = 0.0, 0
    for x, ids in batches:
        logits = model(**x)["logits"]
        per_seq = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        total += float(per_seq) * ids.shape[0]
        count += ids.shape[0]
    return total / count


def test_evaluate_language_model_reports_loss_and_perplexity_not_accuracy():
    torch.manual_seed(0)
    model, batches = DictModel(), lm_batches()
    out = pl.evaluate(model, batches, loss_fn=pl.causal_lm_loss)
    want = manual_lm_loss(model, batches)
    assert out["data_loss"] == pytest.approx(want, rel=1e-6) and out["count"] == 7
    assert out["perplexity"] == pytest.approx(math.exp(want), rel=1e-6)
    assert math.isnan(out["top1"]) and math.isnan(out["top5"])


def test_metrics_fn_and_tuple_inputs_and_raw_outputs():
    torch.manual_seed(1)
    net = nn.Bilinear(3, 4, 2)
    gen = torch.Generator().manual_seed(2)
    batches = [((torch.randn(b, 3, generator=gen), torch.randn(b, 4, generator=gen)), torch.randn(b, 2, generator=gen))
               for b in (2, 5)]
    seen = []

    def mse(output, target):
        seen.append(type(output))
        return F.mse_loss(output, target)

    def metrics(output, target):
        return {"mae": (output - target).abs().mean()}

    out = pl.evaluate(net, batches, loss_fn=mse, metrics_fn=metrics)
    with torch.no_grad():
        mae = sum(float((net(*x) - y).abs().mean()) * y.shape[0] for x, y in batches) / 7
        mse_ = sum(float(F.mse_loss(net(*x), y)) * y.shape[0] for x, y in batches) / 7
    assert out["mae"] == pytest.approx(mae) and out["loss"] == pytest.approx(mse_)
    assert "perplexity" not in out and math.isnan(out["top1"]) and seen == [torch.Tensor, torch.Tensor]


def test_classifier_with_model_output_keeps_top1():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return (self.fc(x), x)  # a tuple: logits first

    torch.manual_seed(3)
    net, x, y = Wrapped(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    out = pl.evaluate(net, [(x, y)])  # the default criterion reads the logits out of the tuple
    want = 100.0 * float((net.fc(x).argmax(1) == y).float().mean())
    assert out["top1"] == pytest.approx(want) and out["loss"] == pytest.approx(float(F.cross_entropy(net.fc(x), y)))


def test_model_loss_and_lm_finetune_keep_masks_and_pick_best_by_loss(tmp_path):
    torch.manual_seed(4)
    model, batches = DictModel(), lm_batches(seed=5)

    @pl.model_loss(perplexity=True)
    def whole_batch(m, batch):
        x, ids = batch
        return pl.causal_lm_loss(m(**x), ids)

    masks = pl.global_magnitude_masks(model, 0.5)
    assert list(masks) == ["fc.weight", "out.weight"]  # the embedding stays out
    cfg = pl.TrainConfig(epochs=3, batch_size=2, lr=0.2, momentum=0.0, weight_decay=0.0, schedule="none")
    res = pl.finetune(model, masks, batches, batches, cfg, loss_fn=whole_batch, run_dir=tmp_path, show_progress=False)
    assert pl.pruning.count_nonzero_pruned(model, masks) == 0
    assert res.final["test_perplexity"] == pytest.approx(math.exp(res.final["test_loss"]))
    assert math.isnan(res.best_top1)
    losses = [row["Test Loss"] for row in res.history]
    assert (tmp_path / "model_best.pth.tar").exists()
    best = torch.load(tmp_path / "model_best.pth.tar", weights_only=True)
    assert best["epoch"] == 1 + losses.index(min(losses))


def test_hessian_with_dict_batches_and_model_loss_match_explicit_hessian():
    torch.manual_seed(6)
    model, batches = DictModel().double(), lm_batches(seed=7)
    batches = [({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"].double()}, ids)
               for x, ids in batches]
    params = [model.fc.weight, model.out.weight]
    named = [("fc.weight", params[0]), ("out.weight", params[1])]

    def loss_of(flat):
        w1, w2 = flat[:25].view(5, 5), flat[25:].view(7, 5)
        total = 0
        for x, ids in batches:
            h = torch.tanh(F.linear(model.emb(x["input_ids"]), w1, model.fc.bias)) * x["attention_mask"].unsqueeze(-1)
            logits = F.linear(h, w2, model.out.bias)
            total = total + F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1)) * ids.shape[0]
        return total / 7

    H = torch.autograd.functional.hessian(loss_of, torch.cat([p.detach().reshape(-1) for p in params]))
    v = torch.randn(H.shape[0], dtype=torch.float64)
    for loss_fn in (pl.causal_lm_loss, pl.model_loss(lambda m, b: pl.causal_lm_loss(m(**b[0]), b[1]))):
        op = pl.HessianOperator(model, loss_fn, batches, params=named)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)


def test_lean_graph_failure_falls_back_to_plain_double_backward_once(monkeypatch):
    import prunelimit.spectrum.second_order as so

    class TanhGrad(torch.autograd.Function):  # the lean backward: first order fine, no derivative of its own
        @staticmethod
        def forward(ctx, g, y):
            return g * (1 - y * y)

        @staticmethod
        def backward(ctx, gg):
            raise RuntimeError("derivative for aten::lean_tanh_backward is not implemented")

    class OnceTanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            y, = ctx.saved_tensors
            return TanhGrad.apply(g, y)

    class BrokenLean(torch.overrides.TorchFunctionMode):  # a "lean path" that has no double backward
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.tanh:
                return OnceTanh.apply(args[0])
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(so, "LeanGraphMode", BrokenLean)
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    data = [(torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))]
    op = pl.HessianOperator(net, F.cross_entropy, data)
    v = torch.randn(op.dim, dtype=torch.float64)
    with pytest.warns(UserWarning, match="lean second-order graphs failed.*plain double backward"):
        hv = op.matvec(v)
    params = list(net.parameters())
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(F.cross_entropy(net(data[0][0]), data[0][1]), params,
                                                               create_graph=True)])
    want = torch.cat([t.reshape(-1) for t in torch.autograd.grad(g @ v, params)])
    torch.testing.assert_close(hv, want)
    torch.testing.assert_close(op.matvec(v), want)  # stays on the plain path, no second warning


def test_op_without_second_derivative_is_a_one_line_error():
    class RawHardsigmoid(nn.Module):
        def forward(self, x):
            return torch.ops.aten.hardsigmoid(x)  # the aten op directly: no decomposition reaches it

    net = nn.Sequential(nn.Linear(3, 4), RawHardsigmoid(), nn.Linear(4, 2))
    op = pl.HessianOperator(net, F.cross_entropy, [(torch.randn(5, 3), torch.randint(0, 2, (5,)))])
    with pytest.warns(UserWarning, match="lean"), pytest.raises(pl.errors.PrunelimitError) as e:
        op.matvec(torch.randn(op.dim))
    assert "no derivative for aten::hardsigmoid_backward" in str(e.value) and "\n" not in str(e.value)


def test_mobilenet_style_hardsigmoid_and_attention_have_hessians():
    torch.manual_seed(9)
    attn = nn.MultiheadAttention(4, 2, batch_first=True).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.gate, self.head = attn, nn.Hardsigmoid(), nn.Linear(4, 2).double()

        def forward(self, x):
            h, _ = self.attn(x, x, x, need_weights=False)
            return self.head((h * self.gate(h)).mean(1))

    net = Net()
    data = [(torch.randn(3, 5, 4, dtype=torch.float64), torch.randint(0, 2, (3,)))]
    op = pl.HessianOperator(net, F.cross_entropy, data)
    assert op.param_names == ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                              "attn.out_proj.bias", "head.weight", "head.bias"]
    v = torch.randn(op.dim, dtype=torch.float64)
    hv = op.matvec(v)
    h = 1e-6  # independent: central differences of first-order gradients
    flat = [p for p in op.params]

    def grad_at(shift):
        with torch.no_grad():
            o = 0
            for p in flat:
                p += shift * v[o:o + p.numel()].view_as(p)
                o += p.numel()
        g = torch.autograd.grad(F.cross_entropy(net(data[0][0]), data[0][1]), flat)
        with torch.no_grad():
            o = 0
            for p in flat:
                p -= shift * v[o:o + p.numel()].view_as(p)
                o += p.numel()
        return torch.cat([t.reshape(-1) for t in g])

    torch.testing.assert_close(hv, (grad_at(h) - grad_at(-h)) / (2 * h), rtol=1e-5, atol=1e-8)


def test_batch_helpers():
    assert batch_size(({"input_ids": torch.zeros(4, 3)}, torch.zeros(4))) == 4
    assert batch_size((torch.zeros(2, 3), torch.tensor(1.0))) == 2
    assert call_model(lambda a, b: a + b, (1, 2)) == 3 and call_model(lambda x=0: x, {"x": 5}) == 5
    assert logits_of((torch.ones(1), 2)).shape == (1,)
    with pytest.raises(pl.errors.PrunelimitError, match="without 'logits'"):
        logits_of({"hidden": torch.ones(1)})
    with pytest.raises(pl.errors.PrunelimitError, match="must yield \\(inputs, targets\\) pairs.*model_loss"):
        pl.evaluate(nn.Linear(2, 2), [torch.zeros(2, 2)])


def test_how_far_can_a_language_model_be_pruned_from_the_loss_alone():
    from prunelimit.limit import rule_limits, rule_limit
    torch.manual_seed(10)
    model, batches = DictModel(vocab=11), lm_batches(seed=11, vocab=11, n=3)
    ordering = pl.MagnitudeOrdering.from_model(model)
    assert ordering.names == ["fc.weight", "out.weight"]

    def ev(m):
        return pl.evaluate(m, batches, loss_fn=pl.causal_lm_loss)

    rows = pl.run_sweep(model, ordering, [i / 20 for i in range(20)], ev, ev, show_progress=False)
    assert all(r["test_acc"] is None for r in rows)
    eps, per_batch = pl.loss_epsilon(model, batches, pl.causal_lm_loss)
    assert len(per_batch) == 3 and eps == pytest.approx(float(torch.tensor(per_batch, dtype=torch.float64).std()))
    limits = rule_limits(rows, epsilon=eps)
    for rule in ("above_baseline", "acc_drop"):
        assert limits[rule]["first_failure"].prune_fraction is None
        assert "needs accuracy" in limits[rule]["first_failure"].reason
    with pytest.raises(pl.errors.PrunelimitError, match="'acc_drop'.*needs accuracy.*'loss_increase'"):
        rule_limit(rows, "acc_drop", delta=1.0)
    # the loss rule by hand: the largest p before the first row whose train loss exceeds L(w*) + eps
    base = rows[0]["train_data_loss"]
    want = None
    for r in rows:
        if r["train_data_loss"] > base + eps:
            break
        want = r["prune_fraction"]
    got = limits["loss_increase"]["first_failure"]
    assert got.prune_fraction == want or (want == rows[-1]["prune_fraction"] and got.lower_bound == want)
    op = pl.HessianOperator(model, pl.causal_lm_loss, batches)
    nodes, weights = pl.slq_spectrum(op, steps=8, probes=1)
    pred = pl.predict_limit(nodes, weights, eps, ordering)
    assert 0.0 <= pred.limit < 1.0 and pred.keep_fraction == pytest.approx(1 - pred.limit)
