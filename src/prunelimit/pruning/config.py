"""``PruneConfig``: the pruning section of a run config, and the one call that turns it into masks."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from .magnitude import RULES, global_magnitude_masks
from .min_threshold import MT_MODES, check_min_threshold, min_threshold_masks
from .select import check_sparsity
from prunelimit.errors import PrunelimitError


@dataclass(frozen=True)
class PruneConfig:
    sparsity: float = 0.9  # fraction of prunable weights removed (0.9 = 90 %); keep_fraction = 1 - sparsity
    min_threshold: float | None = None  # MT: per-layer floor in percent of N (0.05 = 0.05 %); None or 0 = plain GP
    mt_mode: str = "proportional"  # "proportional" (published pipeline) or "global" (water-filling, paper text)
    include: list[str] | str | None = None  # module/parameter name patterns to prune (default: Conv2d/Linear weights)
    exclude: list[str] | str | None = None  # module/parameter name patterns to leave dense
    rule: str = "exact"  # "exact" (k pruned) or "original" (k-1 pruned, as the published GP code)

    def __post_init__(self):
        # frozen: the normalised values are set once, here
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, "prune.sparsity"))
        if self.min_threshold is not None:
            try:
                object.__setattr__(self, "min_threshold", check_min_threshold(self.min_threshold))
            except ValueError as e:
                raise PrunelimitError(f"prune.min_threshold: {e}") from None
        if self.mt_mode not in MT_MODES:
            raise PrunelimitError(f"prune.mt_mode={self.mt_mode!r} is not known; use one of {', '.join(MT_MODES)}")
        if self.rule not in RULES:
            raise PrunelimitError(f"prune.rule={self.rule!r} is not known; use one of {', '.join(RULES)}")
        if self.rule == "original" and self.uses_min_threshold:
            raise PrunelimitError("prune.rule='original' reproduces the published plain GP only; with prune.min_threshold "
                             "set use rule='exact' (or set min_threshold to 0/null)")
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = [value]
            if value is not None and (not isinstance(value, (list, tuple)) or
                                      not all(isinstance(v, str) and v for v in value)):
                raise PrunelimitError(f"prune.{key} must be a list of name patterns such as ['layer1.*', 'fc'], "
                                 f"got {value!r}")
            object.__setattr__(self, key, list(value) if value is not None else None)

    @property
    def uses_min_threshold(self) -> bool:
        return self.min_threshold is not None and self.min_threshold > 0 and math.isfinite(self.min_threshold)

    @property
    def keep_fraction(self) -> float:
        return 1.0 - self.sparsity


def masks_for_config(model: nn.Module, config: PruneConfig) -> dict[str, Tensor]:
    """GP or GP+MT masks as ``config`` says (True = kept)."""
    if config.uses_min_threshold:
        return min_threshold_masks(model, config.sparsity, config.min_threshold, mode=config.mt_mode,
                                   include=config.include, exclude=config.exclude)
    return global_magnitude_masks(model, config.sparsity, include=config.include, exclude=config.exclude,
                                  rule=config.rule)
