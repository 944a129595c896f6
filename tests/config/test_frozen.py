"""A validated config cannot drift: every section is frozen, and values normalised on construction stay so."""
from __future__ import annotations

import dataclasses

import pytest

from prunelimit.config import load_config, shipped_configs
from prunelimit.config.schema import RunConfig


def _sections(cfg: RunConfig) -> dict[str, object]:
    """Every dataclass-valued field of ``cfg`` (found from the class, so a new section is covered too)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if dataclasses.is_dataclass(getattr(cfg, f.name))}


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_assigning_any_section_field_of_a_validated_config_raises(name):
    cfg = load_config(name)
    sections = _sections(cfg)
    assert {"model", "train", "stages", "spectrum", "limit", "prune", "gp", "finetune"} <= set(sections)
    for section_name, section in sections.items():
        for f in dataclasses.fields(section):
            before = getattr(section, f.name)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(section, f.name, before)
            assert getattr(section, f.name) is before, f"{section_name}.{f.name} changed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = cfg.finetune


def test_normalised_values_survive_freezing_and_replace_validates_again(tmp_path):
    cfg = load_config(None, ["spectrum.cache_graph=true", "prune.exclude=fc3", "model.checkpoint=' '", "train.lr=1", "prune.sparsity=0.5"])
    assert cfg.spectrum.cache_graph == "true"          # YAML bool -> the mode string
    assert cfg.prune.exclude == ["fc3"]                # one pattern -> a list
    assert cfg.model.checkpoint is None                # a blank path means none
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    with pytest.raises(Exception, match="lr"):          # a changed copy is checked like a new one
        dataclasses.replace(cfg.train, lr=-1.0)
    changed = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, sparsity=0.75))
    assert (changed.prune.sparsity, cfg.prune.sparsity) == (0.75, 0.5)
