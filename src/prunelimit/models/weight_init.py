"""Weight initialisation schemes, selected by name (the limit paper's ``init`` config key)."""
from __future__ import annotations

from torch import nn
from prunelimit.errors import PrunelimitError

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)

INIT_SCHEMES = ("default", "kaiming_normal", "kaiming_uniform")


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``model`` in place and return it.

    - ``"kaiming_normal"``: the limit paper's init: conv and linear weights N(0, 2/fan_in) (He
      normal, fan_in, ReLU gain sqrt(2)), their biases 0; norm layers weight 1, bias 0.
    - ``"kaiming_uniform"``: the same with He uniform, U(-sqrt(6/fan_in), sqrt(6/fan_in)).
    - ``"default"``: leave the initialisation the model was built with.
    """
    if scheme not in INIT_SCHEMES:
        raise PrunelimitError(f"unknown init scheme {scheme!r}; valid schemes: {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return model
    fill = nn.init.kaiming_normal_ if scheme == "kaiming_normal" else nn.init.kaiming_uniform_
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            # The original calls leaky_relu with a=0, which is exactly the ReLU gain.
            fill(module.weight, a=0.0, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model
