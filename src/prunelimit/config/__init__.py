"""Typed run configuration: sections from the concept folders, YAML loading, the original flat keys."""
from prunelimit.config.build import ConfigError
from prunelimit.config.loader import config_from_overrides, dump_config, load_config, resolve_config_path, shipped_configs
from prunelimit.config.schema import GPConfig, ModelConfig, RunConfig, StagesConfig

__all__ = ["ConfigError", "GPConfig", "ModelConfig", "RunConfig", "StagesConfig", "config_from_overrides", "dump_config",
           "load_config", "resolve_config_path", "shipped_configs"]
