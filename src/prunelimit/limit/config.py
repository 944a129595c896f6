"""Settings of the limit stage (sweep, prediction, actual-limit rule)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from prunelimit.limit.rules import LOSSES, READINGS, RULES
from prunelimit.errors import PrunelimitError

EPSILON_MODES = ("loss_std",)


@dataclass(frozen=True)
class LimitConfig:
    epsilon: float | str = "loss_std"   # loss tolerance: "loss_std" (std of per-batch train loss at w*) or a number > 0
    epsilon_ddof: int = 0               # "loss_std" divisor n - ddof: 0 = np.std as in the original, 1 = sample std
    loss: str = "data"                  # loss of epsilon, the Hessian and the loss rule: data (criterion only) | regularized (+ L1 term)
    rule: str = "above_baseline"        # headline actual limit: above_baseline (result.txt's) | acc_drop | loss_increase
    reading: str = "default"            # how every rule becomes one p: first_failure | largest_passing | default (the original's for above_baseline, first_failure otherwise)
    delta: float = 1.0                  # allowed test-accuracy drop, in points, for the acc_drop rule
    integer_R: bool = False             # True: round R to integers like the original (wrong when R < 1)
    sweep_points: int = 1000            # grid i/sweep_points, i = 0..sweep_points-1 (the original's sparse_epoch)
    tail_points: int = 0                # extra sweep points beyond 1 - 1/sweep_points, keep fraction geometric down to 1 weight
    adaptive: bool = False              # find the actual limit by coarse grid + bisection instead of a full sweep
    coarse_points: int = 20             # coarse grid size of the adaptive search
    sweep_train: bool = True            # also evaluate the training set at every sweep point

    def __post_init__(self):
        if isinstance(self.epsilon, str):
            if self.epsilon not in EPSILON_MODES:
                raise PrunelimitError(f"limit.epsilon: {self.epsilon!r} is not known; use 'loss_std' or a number > 0")
        elif isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) \
                or not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PrunelimitError(f"limit.epsilon must be 'loss_std' or a finite number > 0; got {self.epsilon!r}")
        if isinstance(self.epsilon_ddof, bool) or self.epsilon_ddof not in (0, 1):
            raise PrunelimitError(f"limit.epsilon_ddof must be 0 (np.std, the original's) or 1 (sample std); "
                             f"got {self.epsilon_ddof!r}")
        if self.loss not in LOSSES:
            raise PrunelimitError(f"limit.loss: {self.loss!r} is not known; use 'data' (the criterion alone, the default) "
                             f"or 'regularized' (criterion + the L1 training term, as the original)")
        if self.reading != "default" and self.reading not in READINGS:
            raise PrunelimitError(f"limit.reading: {self.reading!r} is not known; use first_failure, largest_passing or "
                             f"default")
        if self.rule not in RULES:
            raise PrunelimitError(f"limit.rule: {self.rule!r} is not a limit rule; choose one of {', '.join(RULES)}")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) \
                or not (math.isfinite(self.delta) and self.delta >= 0):
            raise PrunelimitError(f"limit.delta (accuracy points) must be a number >= 0; got {self.delta!r}")
        for key in ("integer_R", "adaptive", "sweep_train"):
            if not isinstance(getattr(self, key), bool):
                raise PrunelimitError(f"limit.{key} must be true or false; got {getattr(self, key)!r}")
        if isinstance(self.sweep_points, bool) or not isinstance(self.sweep_points, int) or self.sweep_points < 2:
            raise PrunelimitError(f"limit.sweep_points (the original's sparse_epoch) must be an integer >= 2; "
                             f"got {self.sweep_points!r}")
        if isinstance(self.tail_points, bool) or not isinstance(self.tail_points, int) or self.tail_points < 0:
            raise PrunelimitError(f"limit.tail_points must be an integer >= 0 (extra sweep points near p = 1); "
                                  f"got {self.tail_points!r}")
        if self.tail_points and self.adaptive:
            raise PrunelimitError("limit.tail_points refines the full sweep; the adaptive search (limit.adaptive: "
                                  "true) works on the grid i/sweep_points: raise limit.sweep_points instead")
        if isinstance(self.coarse_points, bool) or not isinstance(self.coarse_points, int) \
                or self.coarse_points < 2 or (self.adaptive and self.coarse_points > self.sweep_points):
            raise PrunelimitError(f"limit.coarse_points must be an integer in [2, sweep_points={self.sweep_points}]; "
                             f"got {self.coarse_points!r}")
