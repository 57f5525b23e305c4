"""Experiment configuration: YAML + CLI dotlist merged by OmegaConf, validated against dataclasses."""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import math
import os
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or missing."""


types_union = getattr(types, "UnionType", None)  # `int | None` annotations (Python >= 3.10)


def _register_resolvers() -> None:
    resolvers = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b,
        "basename": lambda p: os.path.basename(p),
        "rmspace": lambda s, sub: str(s).replace(" ", sub),
        "tuple2": lambda s: [float(s), float(s)],
        "gt0": lambda s: s > 0,
        "not0": lambda s: s != 0,
        "cmaxgt0": lambda s: max(s) > 0 if isinstance(s, (list, ListConfig)) else s > 0,
        # lr decay rate that takes `lr` to `final_lr` in `steps` exponential steps
        "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
        "now": lambda fmt="%Y%m%d-%H%M%S": datetime.now().strftime(fmt),
        "sqrt": lambda x: math.sqrt(x),
    }
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            register(name, fn)


_register_resolvers()


@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"

    # set by load_config, do not set by hand
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1

    resume: Optional[str] = None
    # memory preset of the distillation recipes (threestudio/utils/presets.py), applied between the YAML and the
    # command line; load_config records it in `preset_applied` and clears `preset`, so a saved parsed.yaml holds
    # the resolved values and reloading it does not apply the preset over later overrides again
    preset: Optional[str] = None
    preset_applied: Optional[str] = None

    data_type: str = ""
    data: dict = field(default_factory=dict)

    system_type: str = ""
    system: dict = field(default_factory=dict)

    # passed to pytorch_lightning.Trainer
    trainer: dict = field(default_factory=dict)
    # passed to pytorch_lightning.callbacks.ModelCheckpoint
    checkpoint: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tag and not self.use_timestamp:
            raise ConfigError("Either `tag` must be non-empty or `use_timestamp` must be true.")
        self.trial_name = self.tag
        if self.timestamp is None:
            self.timestamp = ""
            if self.use_timestamp:
                self.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
        self.trial_name += self.timestamp
        self.exp_dir = os.path.join(self.exp_root_dir, self.name)
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)


def load_config(*yamls: str, cli_args: Optional[list[str]] = None, from_string: bool = False,
                **overrides: Any) -> ExperimentConfig:
    """Merge YAML files (or strings) and `key=value` CLI arguments into a validated ExperimentConfig."""
    cli_args = list(cli_args or [])
    for arg in cli_args:
        if "=" not in arg:
            raise ConfigError(f"Command-line override '{arg}' is not of the form key=value.")
    try:
        if from_string:
            loaded = [OmegaConf.create(s) for s in yamls]
        else:
            loaded = []
            for path in yamls:
                if not os.path.isfile(path):
                    raise ConfigError(f"Config file '{path}' does not exist.")
                loaded.append(OmegaConf.load(path))
        cfg = OmegaConf.merge(*loaded, OmegaConf.from_dotlist(cli_args), OmegaConf.create(overrides))
        preset = OmegaConf.select(cfg, "preset", default=None)
        if preset is not None:
            from threestudio.utils.presets import PresetError, preset_overrides

            try:
                layer = preset_overrides(str(OmegaConf.select(cfg, "system_type", default="")), str(preset))
            except PresetError as e:
                raise ConfigError(str(e)) from None
            dotlist = [f"{k}={v}" for k, v in layer.items()]
            cfg = OmegaConf.merge(*loaded, OmegaConf.from_dotlist(dotlist), OmegaConf.from_dotlist(cli_args),
                                  OmegaConf.create(overrides))
            cfg.preset, cfg.preset_applied = None, str(preset).lower()
        OmegaConf.resolve(cfg)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"Could not build the configuration: {e}") from e
    return parse_structured(ExperimentConfig, cfg, where="")


def config_to_primitive(config: Any, resolve: bool = True) -> Any:
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=resolve)
    return config


def dump_config(path: str, config: Any) -> None:
    """Write a config as YAML, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fp:
        OmegaConf.save(config=config, f=fp)
    os.replace(tmp, path)


def _key_path(where: str, key: Any) -> str:
    key = "" if key is None else str(key)
    return ".".join(p for p in (where, key) if p) or "<root>"


def parse_structured(fields: type, cfg: Optional[Any] = None, where: str = "") -> Any:
    """Validate `cfg` (dict or DictConfig) against the dataclass `fields` and return an instance.

    Unknown keys, values of the wrong type and missing required values (`???`) raise ConfigError
    naming the full key, e.g. `system.geometry.radius`.
    """
    if cfg is None:
        cfg = {}
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"{_key_path(where, None)}: expected a mapping of options for {fields.__name__}, got {cfg!r}."
        )
    try:
        schema = OmegaConf.structured(fields)
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        reason = str(e).split("\n")[0]
        if "not in" in reason:
            valid = ", ".join(f.name for f in dataclasses.fields(fields))
            raise ConfigError(
                f"Unknown config key '{_key_path(where, key)}' for {fields.__name__}. Valid keys: {valid}."
            ) from None
        raise ConfigError(f"Invalid value for '{_key_path(where, key)}': {reason}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        names = ", ".join(_key_path(where, k) for k in missing)
        raise ConfigError(f"Missing required config value(s): {names}. Set them in the YAML or as key=value.")
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"Invalid value for '{_key_path(where, key)}': {str(e).splitlines()[0]}") from None


# ------------------------------------------------------------ options passed on to a library's signature
def _matches_annotation(value: Any, annotation: Any) -> bool:
    """Whether a YAML value can be of type `annotation` (unknown typing constructs are accepted)."""
    if annotation in (Any, inspect.Parameter.empty, object):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (types_union is not None and origin is types_union):
        return any(_matches_annotation(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, set, collections.abc.Sequence, collections.abc.Iterable):
        return isinstance(value, (list, tuple))
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe_annotation(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    return text if len(text) < 120 else text[:117] + "..."


def validate_call_options(target: Any, options: Any, where: str, reserved: Optional[dict[str, str]] = None) -> dict:
    """Check a config dict that is passed as keyword arguments to `target` (e.g. `trainer:` to
    `pytorch_lightning.Trainer`): unknown keys, and values that cannot have the annotated type, raise a
    ConfigError naming `where.key` before any work. Returns the options as a plain dict."""
    options = config_to_primitive(options) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping of {getattr(target, '__name__', target)} options, "
                          f"got {options!r}.")
    init = target.__init__ if isinstance(target, type) else target
    params = {n: p for n, p in inspect.signature(init).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to no type check
        hints = {}
    name = getattr(target, "__name__", str(target))
    for key, value in options.items():
        if reserved and key in reserved:
            raise ConfigError(f"{where}.{key}: {reserved[key]}")
        if key not in params:
            close = difflib.get_close_matches(str(key), list(params), n=1)
            hint = f" Did you mean '{where}.{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key '{where}.{key}' for {name}.{hint} "
                              f"Valid keys: {', '.join(k for k in params if not reserved or k not in reserved)}.")
        annotation = hints.get(key, inspect.Parameter.empty)
        if not _matches_annotation(value, annotation):
            raise ConfigError(f"Invalid value for '{where}.{key}': {value!r} is not of type "
                              f"{_describe_annotation(annotation)}.")
    return options


def require_positive(value: Any, where: str, allow_zero: bool = False) -> None:
    """A size or count: a positive int (or >= 0 with allow_zero); a list checks every entry."""
    for item in value if isinstance(value, (list, tuple, ListConfig)) else [value]:
        ok = isinstance(item, int) and not isinstance(item, bool) and (item >= 0 if allow_zero else item > 0)
        if not ok:
            raise ConfigError(f"{where} must be {'a non-negative' if allow_zero else 'a positive'} integer"
                              f"{' (each entry)' if isinstance(value, (list, tuple, ListConfig)) else ''}, "
                              f"got {value!r}.")
