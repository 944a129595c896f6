"""The Hessian restricted to a mask's kept weights equals the explicit Hessian's kept submatrix."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import HessianOperator, slq_spectrum
from prunelimit.spectrum.restricted import RestrictedOperator


def test_restricted_operator_is_the_kept_submatrix_and_its_spectrum():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(12, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (12,), generator=gen))]
    op = HessianOperator(net, nn.functional.cross_entropy, batches)
    H = op.matmat(torch.eye(op.dim, dtype=torch.float64))             # explicit, column by column
    masks = {"0.weight": torch.rand(6, 4, generator=gen) > 0.5, "2.weight": torch.rand(3, 6, generator=gen) > 0.3}
    sub = RestrictedOperator(op, masks)
    keep = torch.cat([masks.get(n, torch.ones(s, dtype=torch.bool)).reshape(-1) for n, s in zip(op.param_names, op.shapes)])
    assert sub.dim == int(keep.sum())
    H_kept = H[keep][:, keep]
    V = torch.randn(3, sub.dim, dtype=torch.float64)
    torch.testing.assert_close(sub.matmat(V), V @ H_kept, rtol=1e-10, atol=1e-12)
    nodes, weights = slq_spectrum(sub, sub.dim, 1, seed=2)             # all steps: the exact spectrum
    torch.testing.assert_close(nodes.sort().values, torch.linalg.eigvalsh(H_kept), rtol=1e-7, atol=1e-9)
    with pytest.raises(PrunelimitError, match="not parameters"):
        RestrictedOperator(op, {"fc.weight": torch.ones(6, 4, dtype=torch.bool)})
    with pytest.raises(PrunelimitError, match="keep no weight"):
        RestrictedOperator(op, {n: torch.zeros(s, dtype=torch.bool) for n, s in zip(op.param_names, op.shapes)})
