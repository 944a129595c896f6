"""The spectrum of the pruned subnetwork (``spectrum.masks`` / ``prunelimit spectrum --masks FILE``).

One stage unit, ``PrunedSpectrumStage`` -> ``SpectrumResult``: the masks are applied to a copy of the
model (the pruned weights zeroed, the kept ones as they are: load fine-tuned weights through
``model.checkpoint`` to take it after fine-tuning), and the same SLQ / top-k / trace as the dense
spectrum runs on the Hessian of that model restricted to the weights the masks keep
(``RestrictedOperator``: P^T H P with P selecting the kept coordinates) — the curvature of the loss as a
function of the weights that remain. Written beside the dense spectrum as ``limit/spectrum_pruned.json``,
``density_pruned.csv`` and ``spectral_density_pruned.png``; the stage prints both spectra's top
eigenvalue and trace so the flatness before and after pruning can be compared.
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.pipeline import stages
from prunelimit.pipeline.common import Context, Data, say
from prunelimit.pipeline.hessian import hessian_setup
from prunelimit.pipeline.results import SpectrumResult
from prunelimit.pipeline.stages import StageUnit
from prunelimit.runs import paths
from prunelimit.runs.io import read_json

PRUNED_FILES = (paths.SPECTRUM_PRUNED_JSON, paths.DENSITY_PRUNED_CSV, paths.DENSITY_PRUNED_PNG,
                "lanczos_state_pruned")


def read_spectrum_masks(ctx: Context, model: nn.Module) -> dict:
    """The masks of ``spectrum.masks``: a safetensors mask file, or an original ``weight_mask.npy`` only
    when this command line passed --allow-pickle (it is a pickle); checked against the model."""
    from prunelimit.pruning import check_masks_fit, load_legacy_mask_npy, load_masks

    cfg = ctx.cfg
    path = Path(cfg.spectrum.masks)
    if path.suffix == ".npy":
        masks = load_legacy_mask_npy(path, model, allow_pickle=ctx.allow_pickle,
                                     include=cfg.prune.include, exclude=cfg.prune.exclude)
    else:
        masks = load_masks(path)
    check_masks_fit(model, masks, source=f"spectrum.masks {str(path)!r}", include=cfg.prune.include,
                    exclude=cfg.prune.exclude)
    return masks


class PrunedSpectrumStage(StageUnit):
    """SLQ spectrum, top eigenvalues and trace of the Hessian restricted to the kept weights."""

    def __init__(self, ctx: Context, model: nn.Module, data: Data):
        """Reads and checks the masks at once, so a bad file is refused before any stage starts; set
        ``dense`` (the dense spectrum) before driving it for the comparison line."""
        self.ctx, self.model, self.data, self.dense = ctx, model, data, None
        self.out = ctx.run.sub(paths.LIMIT)
        self.masks = read_spectrum_masks(ctx, model)

    def stage(self):
        return stages.pruned_spectrum_stage(self.ctx.cfg)

    def load(self, record):
        say("pruned-subnetwork spectrum: finished earlier")
        result = SpectrumResult.from_json(read_json(self.out / paths.SPECTRUM_PRUNED_JSON))
        self._compare(result)
        return result

    def marker(self, result):
        return {"dim": result.dim, "top_eigenvalue": list(result.top_eigenvalues[:1])}

    def run(self):
        from prunelimit.pipeline.limit import compute_spectrum
        from prunelimit.pruning import apply_masks, mask_sparsity
        from prunelimit.spectrum import RestrictedOperator

        masks = self.masks
        pruned = apply_masks(copy.deepcopy(self.model), masks)   # the caller's model stays as it is
        op = hessian_setup(self.ctx, pruned, self.data)[0]()
        canonical = _operator_masks(op, pruned, masks)
        kept = RestrictedOperator(op, canonical)
        sparsity = mask_sparsity(masks).sparsity
        say(f"pruned-subnetwork spectrum: {self.ctx.cfg.spectrum.masks} prunes {sparsity:.2%} of the masked weights; "
            f"the Hessian of the pruned model restricted to the {kept.dim:,} of {op.dim:,} parameters it keeps")
        result = compute_spectrum(self.ctx, kept, PRUNED_FILES, what="pruned-subnetwork spectrum",
                                  title=f", pruned ({kept.dim:,} of {op.dim:,} kept)",
                                  extra={"full_dim": op.dim, "masks": str(self.ctx.cfg.spectrum.masks)})
        self._compare(result)
        return result

    def _compare(self, pruned: SpectrumResult) -> None:
        """The line that compares the flatness before and after pruning."""
        dense = self.dense
        if dense is None:
            return

        def top(r: SpectrumResult) -> str:
            return f"{r.top_eigenvalues[0]:.4g}" if r.top_eigenvalues else "-"

        def trace(r: SpectrumResult) -> str:
            return "-" if r.trace is None else f"{r.trace:.4g} (mean eigenvalue {r.trace / r.dim:.3g})"

        say(f"spectrum before / after pruning ({dense.dim:,} / {pruned.dim:,} parameters): top eigenvalue "
            f"{top(dense)} / {top(pruned)}; trace {trace(dense)} / {trace(pruned)}")


def _operator_masks(op, model: nn.Module, masks: dict) -> dict:
    """The masks under the operator's parameter names (aliases and wrapper prefixes resolved); masks of
    parameters the operator does not differentiate are refused by name."""
    from prunelimit.pruning.names import canonical_masks
    from prunelimit.spectrum.parameters import parameter_kind, why_left_out

    canonical = canonical_masks(model, masks)
    outside = sorted(set(canonical) - set(op.param_names))
    if outside:
        raise PrunelimitError(f"spectrum.masks masks {outside[:4]}, which the Hessian does not cover "
                              f"({outside[0]!r} is {why_left_out(parameter_kind(model, outside[0]))}: "
                              f"spectrum.parameters=prunable, the paper's convention, takes the weights and biases "
                              f"of prunable layers only); set spectrum.parameters=all to include it, or use masks "
                              f"of those layers only")
    return canonical

