"""Model registry: ``create_model(name, num_classes, input_shape)`` for every architecture of both papers.

    from prunelimit.models import create_model, list_models
    model = create_model("wrn-28-8", num_classes=10)
    mlp = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))

Register your own with ``@register_model("name")`` on ``factory(num_classes, input_shape=None, **options)``.
"""
from __future__ import annotations

# Importing the family modules registers their models.
from . import (alexnet, cifar_resnet, lenet, mlp, mobilenet_cifar, tiny, torchvision_models,  # noqa: F401
               vgg, wide_resnet)
from .registry import ModelInfo, create_model, list_models, model_info, register_model, register_name_pattern
from .weight_init import INIT_SCHEMES, init_weights

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model", "register_name_pattern",
           "init_weights", "INIT_SCHEMES"]
