"""Read a YAML config (ours or the original flat form), apply ``key=value`` overrides, build RunConfig."""
from __future__ import annotations

import copy
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from prunelimit.config.build import ConfigError, build_dataclass, coerce, field_names, to_dict
from prunelimit.messages import suggest
from prunelimit.config.original import ORIGINAL_KEYS, is_flat_value, map_flat
from prunelimit.config.schema import SECTIONS, RunConfig

TOP_LEVEL = [f for f in field_names(RunConfig) if f not in SECTIONS]
_MISSING = object()
PICKLE_KEY = "allow_pickle"


def shipped_configs() -> dict[str, Path]:
    """Configs inside the package: ``{stem: path}``."""
    root = resources.files("prunelimit") / "configs"
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith((".yaml", ".yml")):
            out[Path(entry.name).stem] = Path(str(entry))
    return dict(sorted(out.items()))


def resolve_config_path(spec: str | os.PathLike) -> Path:
    """A path, or the name of a shipped config (``FC_CIFAR10_l1``)."""
    p = Path(spec)
    if p.is_file():
        return p
    shipped = shipped_configs()
    if str(spec) in shipped:   # a folder of that name (a run directory called "default") does not hide it
        return shipped[str(spec)]
    if p.is_dir():
        raise ConfigError(f"config {str(p)!r} is a directory; give a YAML file")
    raise ConfigError(f"config file {str(spec)!r} does not exist{suggest(str(spec), shipped)}; "
                      f"shipped configs: {', '.join(shipped)}")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {str(path)!r} is not a text (YAML) file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {str(path)!r} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:  # an empty file (or comments only) would silently run the built-in defaults
        raise ConfigError(f"config {str(path)!r} is empty; give at least the keys that differ from the defaults "
                          f"(`prunelimit validate default` prints a complete config to start from)")
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping of keys (key: value), got {type(data).__name__}")
    return data


def split_raw(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Raw YAML mapping -> ``{"": top-level, section: {...}}``; flat original keys mapped first."""
    flat = {k: v for k, v in raw.items() if is_flat_value(k, v) and k not in TOP_LEVEL}
    tree: dict[str, dict[str, Any]] = map_flat(flat, where) if flat else {"": {}}
    tree["_flat"] = flat  # kept so that flat overrides combine with the file's (l1 + lmbda, schedu + schedumode)
    valid = TOP_LEVEL + list(SECTIONS) + list(ORIGINAL_KEYS)
    for key, value in raw.items():
        if key in flat:
            continue
        if key in SECTIONS:
            if key == "data" and value is None:
                tree["data"] = None
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping (e.g. {key}: {{...}}), got {value!r}")
            tree.setdefault(key, {}).update(value)
        elif key in TOP_LEVEL or key == PICKLE_KEY:  # allow_pickle: refused with its own message
            tree[""][key] = value
        else:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, valid)}. Top-level keys: "
                              f"{', '.join(TOP_LEVEL)}; sections: {', '.join(SECTIONS)}; "
                              f"or the original flat keys: {', '.join(ORIGINAL_KEYS)}")
    return tree


def apply_overrides(tree: dict[str, dict[str, Any]], overrides: Iterable[str]) -> None:
    """``section.key=value`` / ``key=value`` (top-level or original flat key); values parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=0.05")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if "." in key:
            section, field = key.split(".", 1)
            if section not in SECTIONS:
                raise ConfigError(f"override {item!r}: unknown section {section!r}{suggest(section, SECTIONS)}")
            if tree.get(section) is None:
                tree[section] = {}
            tree[section][field] = value
        elif key in TOP_LEVEL or key == PICKLE_KEY:
            if key == "gpu" and value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"override {item!r}: gpu must be a GPU index such as 0")
            tree[""][key] = value
        elif key == "data" and value is None:
            tree["data"] = None
        elif key in ORIGINAL_KEYS:
            file_flat = tree.setdefault("_flat", {})
            before = map_flat(file_flat, "config") if file_flat else {}
            file_flat[key] = value
            after = map_flat(file_flat, f"override {item!r}")
            for section, vals in after.items():
                for field, v in vals.items():
                    if section == "" and field == "pipeline":
                        continue
                    if before.get(section, {}).get(field, _MISSING) != v:
                        tree.setdefault(section, {})[field] = v
        else:
            raise ConfigError(f"override {item!r}: unknown key {key!r}{suggest(key, TOP_LEVEL + list(ORIGINAL_KEYS))}; "
                              f"use section.key=value, e.g. train.lr=0.05")


def refuse_pickle_opt_in(tree: dict[str, Any], where: str) -> None:
    """An opt-in to unpickling is per command line (``--allow-pickle``), never read from a file.

    A config that says ``allow_pickle: true`` (at the top or in any section) is refused; ``false`` is the
    default and is dropped, so run directories written by older versions (which recorded
    ``model.allow_pickle: false``) still load."""
    for section, values in list(tree.items()):
        if not isinstance(values, dict) or section == "_flat":
            continue
        if PICKLE_KEY in values:
            key = f"{section}.{PICKLE_KEY}" if section else PICKLE_KEY
            if values[PICKLE_KEY] is not False:
                raise ConfigError(f"{where}: {key} is not a config key: unpickling is allowed only by the "
                                  f"--allow-pickle flag of the command that loads the file; remove the key")
            del values[PICKLE_KEY]


def apply_values(tree: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Typed values by key (``section.field`` or top-level), e.g. from the CLI's flag table; applied after
    the file and the ``key=value`` overrides."""
    for key, value in values.items():
        section, dot, field = key.partition(".")
        if not dot:
            if key == "data" and value is None:
                tree["data"] = None
            elif key in TOP_LEVEL or key == PICKLE_KEY:
                tree[""][key] = value
            else:
                raise ConfigError(f"unknown top-level key {key!r}{suggest(key, TOP_LEVEL)}")
            continue
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r} in {key!r}{suggest(section, SECTIONS)}")
        if tree.get(section) is None:
            tree[section] = {}
        tree[section][field] = value


def build_run_config(tree: dict[str, dict[str, Any]], where: str) -> RunConfig:
    refuse_pickle_opt_in(tree, where)
    base = to_dict(RunConfig())
    kwargs: dict[str, Any] = {}
    for key, value in tree.get("", {}).items():
        kwargs[key] = value
    for section in SECTIONS:
        if section in tree and tree[section] is None:
            kwargs[section] = None
            continue
        merged = copy.deepcopy(base[section])
        merged.update(tree.get(section, {}))
        kwargs[section] = merged
    # sections are built one by one so errors name the section
    from prunelimit.config.schema import RunConfig as RC

    hints = typing.get_type_hints(RC)
    built = {}
    for key, value in kwargs.items():
        if key in SECTIONS:
            built[key] = None if value is None else build_dataclass(_section_type(hints[key]), value, f"{where}: {key}")
        else:
            built[key] = coerce(value, hints[key], f"{where}: {key}")
    try:
        return RC(**built)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _section_type(tp):
    """``DataConfig | None`` -> ``DataConfig``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                values: Mapping[str, Any] | None = None) -> RunConfig:
    """Load ``path`` (a YAML file or a shipped config's name; None: the embedded default), then apply the
    ``key=value`` ``overrides`` and the typed ``values`` (``{"train.lr": 0.1}``)."""
    p = resolve_config_path(path if path is not None else "default")
    tree = split_raw(read_yaml(p), str(p))
    overrides = list(overrides)
    apply_overrides(tree, overrides)
    apply_values(tree, values or {})
    if tree[""].get("name") is None:
        tree[""]["name"] = p.stem
    cfg = build_run_config(tree, f"{p} (with command-line overrides)" if overrides or values else str(p))
    return cfg


def config_from_overrides(overrides: Iterable[str] = (), where: str = "command line", *,
                          values: Mapping[str, Any] | None = None) -> RunConfig:
    """A RunConfig from the built-in defaults plus ``key=value`` overrides and typed ``values`` (commands
    run without CONFIG)."""
    tree: dict[str, Any] = {"": {}}
    apply_overrides(tree, overrides)
    apply_values(tree, values or {})
    return build_run_config(tree, where)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
