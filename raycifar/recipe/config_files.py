"""Settings as files: `--config FILE` and `raycifar.fit("FILE")`.

A config file is YAML or JSON, one mapping: TrainConfig fields at the top, and the LR choice
as the command line spells it (`lr: auto|manual`, `lr_from: RUN_DIR`, `range_test:` with
RangeTestConfig fields, `search: true` or SearchConfig fields). A run's own config.json (or
its folder) is read too: its resolved config with the LRs it trained with, so the run is made
again as it was (another `name` keeps the first one). Shipped presets (presets/*.yaml beside
this module) go by name: `--config smoke`.

Everything is checked when the file is read: unknown keys, and values of the wrong type (a
YAML `1e-4` is a string to YAML 1.1, so numbers written as strings are read as numbers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .config import LR_MODES, ConfigError, RangeTestConfig, SearchConfig, TrainConfig

PRESETS = Path(__file__).resolve().parent / "presets"
RUN_CONFIG = "config.json"  # store.runs.CONFIG: a run folder's record of itself
CHOICE_KEYS = ("lr", "lr_from", "range_test", "search")


@dataclass(frozen=True)
class ConfigFile:
    """What a config file says: TrainConfig fields (only those it names) and the LR choice."""

    path: str
    fields: dict[str, Any] = field(default_factory=dict)
    lr: Optional[str] = None                       # LR_MODES; None: as the fields imply
    lr_from: Optional[str] = None
    range_test: dict[str, Any] = field(default_factory=dict)
    search: Union[bool, dict[str, Any]] = False    # True: the search with its defaults

    @property
    def typed_lrs(self) -> bool:
        return bool({"lr_max", "lr_min"} & set(self.fields))


def presets() -> list[str]:
    """The shipped presets' names."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def find(name: str) -> Path:
    """A config file, a run folder's config.json, or a shipped preset by name."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        path = path / RUN_CONFIG
    if path.is_file():
        return path
    if os.sep not in name and (PRESETS / f"{name}.yaml").is_file():
        return PRESETS / f"{name}.yaml"
    raise ConfigError([f"--config {name}: no such file or run folder, nor a shipped preset "
                       f"(presets: {', '.join(presets())})"])


def load(name: str) -> ConfigFile:
    """Read and check the config file `name` (see `find`)."""
    path = find(name)
    data = _parsed(path)
    if isinstance(data.get("config"), dict) and "version" in data:  # a run's config.json
        fields, problems = _checked(TrainConfig, data["config"], path)
        if problems:
            raise ConfigError(problems)
        return ConfigFile(str(path), fields)
    problems = []
    unknown = sorted(set(data) - _names(TrainConfig) - set(CHOICE_KEYS))
    if unknown:
        problems.append(f"{path}: unknown key(s) {unknown}; a config file holds TrainConfig "
                        f"fields ({', '.join(sorted(_names(TrainConfig)))}) and "
                        f"{', '.join(CHOICE_KEYS)}")
    lr = data.get("lr")
    if lr is not None and lr not in LR_MODES:
        problems.append(f"{path}: lr={lr!r} is not one of {LR_MODES}")
    lr_from = data.get("lr_from")
    if lr_from is not None and not isinstance(lr_from, str):
        problems.append(f"{path}: lr_from must be a run folder's path, not {lr_from!r}")
    fields, wrong = _checked(TrainConfig, {k: v for k, v in data.items()
                                           if k not in CHOICE_KEYS and k not in unknown}, path)
    problems += wrong
    parts = {}
    for key, cls in (("range_test", RangeTestConfig), ("search", SearchConfig)):
        value = data.get(key)
        if value is None or isinstance(value, bool) and key == "search":
            parts[key] = bool(value) if key == "search" else {}
        elif isinstance(value, dict):
            parts[key], wrong = _checked(cls, value, path, f"{key}.")
            problems += wrong
        else:
            problems.append(f"{path}: {key} must be a mapping of its settings"
                            + (" or true/false" if key == "search" else "") + f", not {value!r}")
    if problems:
        raise ConfigError(problems)
    return ConfigFile(str(path), fields, lr=lr, lr_from=lr_from, **parts)


def _parsed(path: Path) -> dict:
    """The mapping a YAML or JSON file holds (an empty file: no settings)."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError([f"{path} is not valid JSON: {e}"]) from e
    else:
        import yaml  # PyYAML: a dependency of Ray's too

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError([f"{path} is not valid YAML: "
                               f"{getattr(e, 'problem', None) or e}{where}"]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path} holds a {type(data).__name__}, not a mapping of settings"])
    return data


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _checked(cls, values: dict, path: Path, prefix: str = "") -> tuple[dict, list[str]]:
    """`values` with each one of the type its field of `cls` has (numbers written as strings
    read as numbers), and the problems found, every one."""
    hints = typing.get_type_hints(cls)
    out, problems = {}, []
    unknown = sorted(set(values) - set(hints))
    if unknown:
        problems.append(f"{path}: unknown key(s) {[prefix + k for k in unknown]}; known: "
                        f"{', '.join(prefix + k for k in sorted(hints))}")
    for key, value in values.items():
        if key not in hints:
            continue
        if cls is TrainConfig and key == "num_workers" and _worker_range(value) is not None:
            out[key] = _worker_range(value)  # an elastic MIN-MAX, as on the command line
            continue
        try:
            out[key] = _as(hints[key], value)
        except (TypeError, ValueError):
            kinds = " or ".join("null" if t is type(None) else t.__name__
                                for t in _kinds(hints[key]))
            problems.append(f"{path}: {prefix}{key}={value!r} should be {kinds}")
    return out, problems


def _kinds(hint) -> tuple[type, ...]:
    return tuple(t for t in typing.get_args(hint) or (hint,))


def _as(hint, value):
    kinds = _kinds(hint)
    if value is None and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value)  # "1e-4": YAML 1.1 reads an exponent without a dot so
        elif kind is str:
            if isinstance(value, str):
                return value
    raise TypeError(value)


def _worker_range(value) -> Optional[tuple[int, int]]:
    """num_workers as "MIN-MAX" or [MIN, MAX] (an elastic run), else None."""
    if isinstance(value, str) and "-" in value.strip()[1:]:
        low, _, high = value.partition("-")
        if low.strip().isdigit() and high.strip().isdigit():
            return int(low), int(high)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return int(value[0]), int(value[1])
    return None
