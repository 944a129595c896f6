"""Hessian operator, Lanczos/SLQ, top eigenvalues and trace against explicit Hessians (eigvalsh)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers
from prunelimit.spectrum import (HessianOperator, MatrixOperator, SpectrumConfig, format_bytes,
                                 hessian_trace, lanczos_tridiagonal, memory_estimate, original_density,
                                 plot_density, slq_spectrum, spectral_density, top_eigenvalues)

torch.set_num_threads(1)


def tiny_net(seed: int = 0) -> nn.Module:
    """Linear(3,5) -> BatchNorm1d -> Tanh -> Linear(5,3), float64; BN with non-trivial running stats."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def tiny_batches(sizes=(7, 3, 5), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
            for n in sizes]


def explicit_hessian(model, batches, loss_fn=nn.functional.cross_entropy, regularizer=None):
    """(d²L/dθ², dL/dθ) over the Linear weights/biases of the test MLP (helpers.explicit_hessian)."""
    return helpers.explicit_hessian(model, batches, names=["0.weight", "0.bias", "3.weight", "3.bias"],
                                    loss_fn=loss_fn, regularizer=regularizer)


def random_symmetric(dim: int, eigenvalues=None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.randn(dim, generator=gen, dtype=torch.float64) if eigenvalues is None else eigenvalues
    return (Q * lam) @ Q.T


def rademacher_rows(num, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(num, dim, generator=gen) < 0.5, -1.0, 1.0).double()


# ----------------------------------------------------------------------------- HessianOperator
@pytest.mark.parametrize("cache", [True, False])
def test_matvec_matches_explicit_hessian(cache):
    net, batches = tiny_net(), tiny_batches()
    net.train()
    op = HessianOperator(net, nn.functional.cross_entropy, batches, cache_graph=cache)
    op.matvec(torch.zeros(op.dim, dtype=torch.float64))
    assert net.training and net[1].training  # the operator restores the caller's train/eval flags
    H, g = explicit_hessian(net, batches)
    assert op.param_names == ["0.weight", "0.bias", "3.weight", "3.bias"]  # BatchNorm excluded
    assert op.dim == H.shape[0] == 38 and op.cached is cache and op.num_samples == 15
    for seed in range(3):
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-11)
    V = torch.randn(4, op.dim, dtype=torch.float64)
    for batched in (False, True):  # a loop of HVPs, and one vmap'd backward (the CUDA default)
        op.batched_hvp = batched
        torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11)
        assert op.batched_hvp is batched  # the batched path really ran (no silent fallback)
    torch.testing.assert_close(op.gradient(), g, rtol=1e-9, atol=1e-11)
    assert op.num_matvecs == 12


@pytest.mark.parametrize("fraction_of_all, cached_batches", [(2.5 / 3, 1), (1.0, 3), (0.2, 0)])
def test_auto_cache_caches_what_fits_the_budget_and_recomputes_the_rest(fraction_of_all, cached_batches):
    net, batches = tiny_net(1), tiny_batches(sizes=(5, 5, 5))
    probe = HessianOperator(net, nn.functional.cross_entropy, batches)
    per_batch = probe.graph_bytes_first - probe.gradient_bytes      # the gradients are held once
    budget = probe.gradient_bytes + int(3 * per_batch * fraction_of_all)
    op = HessianOperator(net, nn.functional.cross_entropy, batches, memory_budget=budget)
    assert op.cached_batches == cached_batches and op.cached is (cached_batches == 3) and op.num_samples == 15
    assert f"caching {cached_batches} of 3 batch(es)" in op.cache_report
    H, g = explicit_hessian(net, batches)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.gradient(), g, rtol=1e-9, atol=1e-11)


def test_regularizer_counts_once_and_its_hessian_is_included():
    net, batches = tiny_net(2), tiny_batches((4, 6))

    def reg_of(params):  # L1 (Hessian 0 a.e.) + a smooth term whose Hessian is 0.2·I on the first weight
        return 1e-3 * sum(p.abs().sum() for p in params.values()) + 0.1 * params["0.weight"].pow(2).sum()

    with torch.no_grad():  # building under no_grad (e.g. inside an evaluation loop) must still work
        op = HessianOperator(net, nn.functional.cross_entropy, batches,
                             regularizer=lambda m: reg_of(dict(m.named_parameters())))
    H, g = explicit_hessian(net, batches, regularizer=reg_of)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.gradient(), g, rtol=1e-9, atol=1e-11)


class LeanNet(nn.Module):
    """Every op LeanGraphMode rewrites, float64: a conv on the data (+ BatchNorm in eval mode with
    non-trivial stats) -> relu -> max_pool2d(return_indices, padding) -> conv on an activation
    ('same' padding, no bias) -> Tensor.relu -> max_pool2d(ceil_mode, stride None); a Conv1d
    branch on the data with reflect padding (F.pad, then a padding-0 conv) and an in-place ReLU
    (left to PyTorch); a Linear head."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding="same", bias=False)
        self.c3 = nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 2 * 2 + 2 * 6, 3)
        self.double()
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):                                      # x: (n, 2, 6, 6)
        h = torch.relu(self.bn(self.c1(x)))                    # (n, 3, 6, 6)
        h, _ = nn.functional.max_pool2d(h, 2, padding=1, return_indices=True)   # (n, 3, 4, 4)
        h = self.c2(h).relu()
        h = nn.functional.max_pool2d(h, kernel_size=(2, 2), stride=None, ceil_mode=True)  # (n, 3, 2, 2)
        z = self.act(self.c3(x.mean(2)))                       # (n, 2, 6)
        return self.fc(torch.cat([h.flatten(1), z.flatten(1)], 1))


def explicit_hessian_of(model, batches, regularizer=None):
    """(d²L/dθ², dL/dθ) over hessian_parameters(model) (the operator's parameter order), as explicit_hessian."""
    from prunelimit.spectrum.operator import hessian_parameters
    return helpers.explicit_hessian(model, batches, names=[n for n, _ in hessian_parameters(model)],
                                    regularizer=regularizer)


class PlainGraphOperator(HessianOperator):
    lean_graphs = False  # PyTorch's own double-backward formulas


def _graph_nodes(op) -> set[str]:
    seen, todo, names = set(), [g.grad_fn for g in op._graph if g is not None], set()
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("cache", [True, False])
def test_lean_graphs_match_explicit_hessian_with_conv_pool_batchnorm_and_l1(cache, monkeypatch):
    import prunelimit.spectrum.lean_graphs as operator_module
    monkeypatch.setattr(operator_module, "_LEAN_MIN_NUMEL", 0)  # rewrite ReLU / max-pool of tiny maps too
    net = LeanNet()
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
               for n in (5, 3)]

    def l1(params):  # the L1 training term: Hessian 0 a.e., gradient λ·sign(θ); counted once
        return 1e-3 * sum(p.abs().sum() for p in params.values())

    op = HessianOperator(net, nn.functional.cross_entropy, batches, cache_graph=cache,
                         regularizer=lambda m: l1(dict(m.named_parameters())))
    H, g = explicit_hessian_of(net, batches, l1)
    torch.testing.assert_close(op.gradient(), g, rtol=1e-9, atol=1e-11)
    assert op.dim == H.shape[0] == 2 * 3 * 9 + 3 + 3 * 3 * 9 + 2 * 2 * 3 + 2 + 24 * 3 + 3
    if cache:  # the rewrites really happened (a silent fall-back would still pass the numbers)
        nodes = _graph_nodes(op)
        assert {"_DataConvBackward", "_DataConvWeightGradBackward", "_ReluBackward", "_MaxPool2dBackward"} <= nodes
        assert "ReluBackward0" in nodes  # the in-place ReLU keeps PyTorch's node
        assert "MaxPool2DWithIndicesBackward0" not in nodes
        assert "ConvolutionBackward0" in nodes  # c2 (input needs grad) keeps PyTorch's conv
    V = torch.randn(4, op.dim, generator=gen, dtype=torch.float64)
    for batched in (False, True):
        op.batched_hvp = batched
        torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11)
        assert op.batched_hvp is batched
    plain = PlainGraphOperator(net, nn.functional.cross_entropy, batches, cache_graph=cache,
                               regularizer=lambda m: l1(dict(m.named_parameters())))
    torch.testing.assert_close(plain.matmat(V), V @ H, rtol=1e-9, atol=1e-11)
    if cache:
        assert not {n for n in _graph_nodes(plain) if n.startswith("_")}


@pytest.mark.parametrize("min_numel", [0, None])
def test_lean_graphs_in_float32_agree_with_plain_graphs_to_rounding(min_numel, monkeypatch):
    import prunelimit.spectrum.lean_graphs as operator_module
    if min_numel is not None:
        monkeypatch.setattr(operator_module, "_LEAN_MIN_NUMEL", min_numel)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    batches = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(2)]
    lean = HessianOperator(net, nn.functional.cross_entropy, batches)
    plain = PlainGraphOperator(net, nn.functional.cross_entropy, batches)
    v = torch.randn(lean.dim)
    a, b = lean.matvec(v), plain.matvec(v)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    torch.testing.assert_close(lean.gradient(), plain.gradient(), rtol=1e-5, atol=1e-7)


def _lean_ddp_worker(rank: int, world: int, port: int):
    import torch.distributed as tdist
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        import prunelimit.spectrum.lean_graphs as operator_module
        operator_module._LEAN_MIN_NUMEL = 0  # this fresh process: rewrite ReLU / max-pool of tiny maps too
        torch.set_num_threads(1)
        net = LeanNet(1)
        gen = torch.Generator().manual_seed(6)
        data = [(torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
                for n in (4, 3, 2)]  # rank 0: batches 0 and 2 (6 samples), rank 1: batch 1 (3)

        def reg(params):  # L1 plus a smooth term, so counting it once per rank would show in H v too
            return 1e-3 * sum(p.abs().sum() for p in params.values()) + 0.1 * params["c2.weight"].pow(2).sum()

        H, g = explicit_hessian_of(net, data, reg)  # single-process full-data Hessian, regularizer once
        V = torch.randn(2, H.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        for cache in (True, False):
            op = HessianOperator(nn.parallel.DistributedDataParallel(net), nn.functional.cross_entropy,
                                 data[rank::world], cache_graph=cache,
                                 regularizer=lambda m: reg(dict(m.named_parameters())))
            assert op.num_samples == 9 and op.cached is cache
            torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(op.gradient(), g, rtol=1e-9, atol=1e-11)
    finally:
        tdist.destroy_process_group()


@pytest.mark.distributed
def test_lean_graphs_under_ddp_with_regularizer_equal_full_data_hessian():
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_lean_ddp_worker, args=(2, port), nprocs=2, join=True)


def test_float32_model_accepts_float64_vectors():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    batches = [(torch.randn(6, 3), torch.randint(0, 2, (6,)))]
    op = HessianOperator(net, nn.functional.cross_entropy, batches)
    v = torch.randn(op.dim, dtype=torch.float64)
    out = op.matvec(v)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, op.matvec(v.float()).double())


def test_operator_input_errors():
    batches = tiny_batches((4,))
    with pytest.raises(ValueError, match="model Sequential has no trainable Conv1d/Conv2d/Linear"):
        HessianOperator(nn.Sequential(nn.BatchNorm1d(3)), nn.functional.cross_entropy, batches)
    with pytest.raises(ValueError, match="model Sequential was given an empty params list"):
        HessianOperator(tiny_net(), nn.functional.cross_entropy, batches, params=[])
    frozen = tiny_net()
    with pytest.raises(ValueError, match="params entry '0.weight' is not a tensor that requires grad"):
        frozen[0].weight.requires_grad_(False)
        HessianOperator(frozen, nn.functional.cross_entropy, batches, params=list(frozen.named_parameters()))
    with pytest.raises(ValueError, match="one-shot iterator"):
        HessianOperator(tiny_net(), nn.functional.cross_entropy, iter(batches))
    with pytest.raises(ValueError, match="cache_graph='yes' is invalid"):
        HessianOperator(tiny_net(), nn.functional.cross_entropy, batches, cache_graph="yes")
    for text, cached in (("false", False), ("true", True)):  # SpectrumConfig.cache_graph strings
        assert HessianOperator(tiny_net(), nn.functional.cross_entropy, batches, cache_graph=text).cached is cached
    with pytest.raises(ValueError, match="batches is empty"):
        HessianOperator(tiny_net(), nn.functional.cross_entropy, [])
    bad = [(torch.full((4, 3), float("inf"), dtype=torch.float64), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="loss at the current weights is not finite"):
        HessianOperator(tiny_net(), nn.functional.cross_entropy, bad)
    op = HessianOperator(tiny_net(), nn.functional.cross_entropy, batches)
    with pytest.raises(ValueError, match="length dim=38"):
        op.matvec(torch.zeros(5, dtype=torch.float64))


# ----------------------------------------------------------------------------- Lanczos / SLQ
def test_slq_with_dim_steps_reproduces_the_spectrum_exactly():
    net, batches = tiny_net(3), tiny_batches()
    op = HessianOperator(net, nn.functional.cross_entropy, batches)
    H, _ = explicit_hessian(net, batches)
    evals, U = torch.linalg.eigh(H)
    start = rademacher_rows(1, op.dim, seed=5)
    nodes, weights = slq_spectrum(op, op.dim, 1, start=start)
    torch.testing.assert_close(nodes, evals, rtol=0, atol=1e-8)
    # weight of an eigenvalue = squared norm of the normalised start vector's projection on its
    # eigenspace. Cross-entropy's logit-shift invariance makes 0 a 6-fold eigenvalue, whose eigenvectors
    # eigh picks arbitrarily, so compare per cluster of equal eigenvalues.
    projection = (U.T @ (start[0] / start[0].norm())) ** 2
    cluster = torch.cat([torch.zeros(1, dtype=torch.long), (evals.diff() > 1e-7).long().cumsum(0)])
    assert cluster.max() < op.dim - 1  # the test really has a repeated eigenvalue
    ours = torch.zeros(int(cluster.max()) + 1, dtype=torch.float64).index_add_(0, cluster, weights)
    exact = torch.zeros_like(ours).index_add_(0, cluster, projection)
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-8)


def test_slq_quadrature_of_smooth_functions():
    dim, steps, probes = 60, 20, 30
    lam = torch.linspace(-1.0, 3.0, dim, dtype=torch.float64)
    A = random_symmetric(dim, lam, seed=1)
    op = MatrixOperator(A)
    start = rademacher_rows(probes, dim, seed=2)
    nodes, weights = slq_spectrum(op, steps, probes, start=start)
    assert nodes.shape == (probes * steps,) and nodes.dtype == torch.float64
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    v = start / start.norm(dim=1, keepdim=True)
    for f_nodes, fA in [(nodes ** 2, A @ A), (torch.exp(-nodes), torch.linalg.matrix_exp(-A))]:
        # Gauss quadrature with 20 nodes is exact for λ² and near-exact for exp(-λ), per probe
        per_probe = torch.einsum("pi,ij,pj->p", v, fA, v).mean()
        assert (weights * f_nodes).sum().item() == pytest.approx(per_probe.item(), rel=1e-10)
        # and v^T f(A) v with ||z||² = dim is an unbiased trace estimator: Var(z^T B z) = 2 Σ_{i≠j} B_ij²
        off = fA - torch.diag(torch.diag(fA))
        sigma = math.sqrt(2 * (off ** 2).sum().item()) / dim / math.sqrt(probes)
        assert abs((weights * f_nodes).sum().item() - torch.trace(fA).item() / dim) < 4 * sigma


def test_slq_default_probes_are_seeded_and_weights_sum_to_one():
    op = MatrixOperator(random_symmetric(20, seed=4))
    n1, w1 = slq_spectrum(op, 8, 3, seed=11)
    n2, w2 = slq_spectrum(op, 8, 3, seed=11, probe_batch=2)
    torch.testing.assert_close(n1, n2)
    torch.testing.assert_close(w1, w2)
    assert w1.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_lanczos_breakdown_restarts_on_repeated_eigenvalues():
    values = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    diag = values.repeat_interleave(3)                                  # dim 9, 3 distinct eigenvalues
    op = MatrixOperator(torch.diag(diag))
    # The start vector's Krylov space closes after 3 steps (3 distinct eigenvalues); the restart
    # vector spans another 3-dimensional one, so 6 steps give every distinct eigenvalue twice.
    alpha, beta, info = lanczos_tridiagonal(op, 6, seed=0)
    assert info.steps == 6 and info.restarts == [3] and beta[2].item() == 0.0
    ritz = torch.linalg.eigvalsh(torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1))
    assert torch.min((ritz[:, None] - values[None, :]).abs(), dim=1).values.max() < 1e-10
    Q = info.basis
    torch.testing.assert_close(Q @ Q.T, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)
    nodes, weights = slq_spectrum(op, 9, 1)                            # steps = dim: all multiplicities
    torch.testing.assert_close(nodes.sort().values, diag, atol=1e-10, rtol=0)
    assert weights.sum().item() == pytest.approx(1.0)


def test_lanczos_errors():
    op = MatrixOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="lanczos_iter=5 exceeds the Hessian dimension dim=4"):
        lanczos_tridiagonal(op, 5)
    with pytest.raises(ValueError, match="lanczos_num"):
        slq_spectrum(op, 2, 0)
    bad = torch.eye(4, dtype=torch.float64)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="Hessian-vector product is not finite at step 0"):
        lanczos_tridiagonal(MatrixOperator(bad), 3)
    with pytest.raises(ValueError, match="not finite at trace sample"):
        hessian_trace(MatrixOperator(bad), 2)


def test_lanczos_without_reorthogonalisation_runs():
    A = random_symmetric(30, seed=6)
    alpha, beta, info = lanczos_tridiagonal(MatrixOperator(A), 10, reorthogonalize=False)
    ritz = torch.linalg.eigvalsh(torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1))
    assert ritz.max().item() <= torch.linalg.eigvalsh(A).max().item() + 1e-10  # Ritz values interlace


# ----------------------------------------------------------------------------- top-k and trace
def test_top_eigenvalues_of_the_hessian():
    net, batches = tiny_net(4), tiny_batches()
    op = HessianOperator(net, nn.functional.cross_entropy, batches)
    H, _ = explicit_hessian(net, batches)
    evals, vecs = top_eigenvalues(op, 3, max_iter=38, tol=1e-8)
    torch.testing.assert_close(evals, torch.linalg.eigvalsh(H).flip(0)[:3], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(vecs @ H, evals[:, None] * vecs, rtol=0, atol=1e-6)


def test_top_eigenvalues_are_algebraic_not_by_magnitude():
    lam = torch.cat([torch.tensor([-50.0, -40.0]), torch.linspace(0.0, 3.0, 38)]).double()
    op = MatrixOperator(random_symmetric(40, lam, seed=7))
    evals, _ = top_eigenvalues(op, 2, max_iter=40, tol=1e-9)
    torch.testing.assert_close(evals, torch.tensor([3.0, lam[-2].item()], dtype=torch.float64), rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="top_k=41"):
        top_eigenvalues(op, 41)


def test_hutchinson_trace():
    D = torch.diag(torch.linspace(-2.0, 7.0, 25, dtype=torch.float64))
    mean, err = hessian_trace(MatrixOperator(D), 5)
    assert mean == pytest.approx(torch.trace(D).item(), abs=1e-12) and err == pytest.approx(0.0, abs=1e-12)
    net, batches = tiny_net(5), tiny_batches()
    op = HessianOperator(net, nn.functional.cross_entropy, batches)
    H, _ = explicit_hessian(net, batches)
    mean, err = hessian_trace(op, 200, seed=3)
    assert err > 0 and abs(mean - torch.trace(H).item()) < 4 * err
    with pytest.raises(ValueError, match="trace_samples"):
        hessian_trace(op, 0)


# ----------------------------------------------------------------------------- density, config, misc
def test_spectral_density_integrates_to_one():
    nodes = torch.tensor([-1.0, 0.0, 0.5, 4.0], dtype=torch.float64)
    weights = torch.tensor([0.1, 0.5, 0.2, 0.2], dtype=torch.float64)
    grid, density = spectral_density(nodes, weights, num_points=4000)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-6)
    # a single node: the density is exactly a Gaussian with the requested sigma
    grid, density = spectral_density([2.0], [1.0], sigma=0.5, num_points=11)
    expected = torch.exp(-(grid - 2.0) ** 2 / 0.5) / math.sqrt(2 * math.pi * 0.25)
    torch.testing.assert_close(density, expected)
    with pytest.raises(ValueError, match="density_sigma"):
        spectral_density(nodes, weights, sigma=0.0)


def test_original_density_underflows_and_warns():
    nodes = torch.tensor([0.0012345, 3.3333, 17.77777], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="underflowed"):
        grid, density = original_density(nodes, weights, num_bins=1000)
    assert grid.numel() == 1000 and torch.all(density == 0)
    grid, density = original_density(nodes, weights, num_bins=1000, sigma_squared=1e-2)
    assert (density.sum() * (grid[1] - grid[0])).item() == pytest.approx(1.0)


def test_memory_estimate_and_format():
    assert memory_estimate(1000, 10, torch.float32) == 4 * 1000 * 14
    assert memory_estimate(1000, 10, torch.float64, probes=2) == 8 * 1000 * 2 * 14
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(12) == "12 B"


def test_spectrum_config_validation():
    cfg = SpectrumConfig(cache_graph=False)
    assert cfg.cache_graph == "false" and cfg.cache_graph_arg() is False
    for kwargs, key in [({"lanczos_iter": 0}, "lanczos_iter"), ({"lanczos_num": 1.5}, "lanczos_num"),
                        ({"density_kernel": "box"}, "density_kernel"), ({"row_threshold": -1}, "row_threshold"),
                        ({"density_sigma": 0}, "density_sigma"), ({"cache_graph": "maybe"}, "cache_graph"),
                        ({"trace_samples": -1}, "trace_samples")]:
        with pytest.raises(ValueError, match=f"spectrum.{key}="):
            SpectrumConfig(**kwargs)


def test_plot_density_writes_png(tmp_path):
    nodes, weights = slq_spectrum(MatrixOperator(random_symmetric(12, seed=8)), 6, 2)
    grid, density = spectral_density(nodes, weights)
    path = plot_density(tmp_path / "density.png", grid, density, nodes, weights)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
