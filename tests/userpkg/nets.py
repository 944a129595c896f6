"""A user's own model module, imported by `--model tests.userpkg.nets:make_net` in the CLI tests."""
from torch import nn


def make_net(width: int = 4, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))


def broken_net(width: int = 4) -> nn.Module:
    raise TypeError("a bug inside the factory")
