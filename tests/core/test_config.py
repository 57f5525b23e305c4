from dataclasses import dataclass, field
from typing import Optional

import pytest

from threestudio.utils.base import BaseModule, build_module
from threestudio.utils.config import ConfigError, load_config, parse_structured


@dataclass
class Geometry:
    radius: float = 1.0
    n_levels: int = 16
    name: str = "???"
    extra: dict = field(default_factory=dict)
    weights: Optional[str] = None


def test_valid_config_is_converted_to_the_dataclass():
    cfg = parse_structured(Geometry, {"radius": 2, "name": "a"})
    assert isinstance(cfg, Geometry)
    assert cfg.radius == 2.0 and isinstance(cfg.radius, float)
    assert cfg.n_levels == 16


def test_unknown_key_names_the_full_key_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_structured(Geometry, {"radiuss": 2, "name": "a"}, where="system.geometry")
    message = str(err.value)
    assert "Unknown config key 'system.geometry.radiuss'" in message
    assert "radius" in message.split("Valid keys:")[1]


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"Invalid value for 'system.geometry.n_levels'.*'abc'"):
        parse_structured(Geometry, {"n_levels": "abc", "name": "a"}, where="system.geometry")


def test_missing_required_value_names_the_key():
    with pytest.raises(ConfigError, match=r"Missing required config value\(s\): system.geometry.name"):
        parse_structured(Geometry, {}, where="system.geometry")


def test_load_config_merges_yaml_cli_and_resolvers(tmp_path):
    base = tmp_path / "a.yaml"
    base.write_text(
        "name: test\ntag: t\nuse_timestamp: false\nexp_root_dir: " + str(tmp_path) + "\n"
        "system_type: x\nsystem:\n  steps: 100\n  half: ${idiv:${system.steps},2}\n  lr: 0.1\n"
    )
    cfg = load_config(str(base), cli_args=["system.steps=50", "seed=7"])
    assert cfg.seed == 7
    assert cfg.system["steps"] == 50
    assert cfg.system["half"] == 25  # interpolation sees the CLI override
    assert cfg.trial_dir == str(tmp_path / "test" / "t")


def test_load_config_unknown_top_level_key(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("name: x\nsytem_type: y\n")
    with pytest.raises(ConfigError, match="Unknown config key 'sytem_type'"):
        load_config(str(path))


def test_load_config_rejects_malformed_cli_argument(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match="'system.lr' is not of the form key=value"):
        load_config(str(path), cli_args=["system.lr"])


def test_load_config_missing_file():
    with pytest.raises(ConfigError, match="Config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


def test_timestamped_trial_name(tmp_path):
    cfg = load_config("name: n\ntag: t", from_string=True)
    assert cfg.trial_name.startswith("t@") and len(cfg.trial_name) == len("t@20260101-000000")


class Widget(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        size: int = 3


def test_module_config_errors_name_the_config_path():
    import threestudio

    threestudio.register("test-config-widget")(Widget)
    assert build_module("test-config-widget", {"size": 5}, "system.widget").cfg.size == 5
    with pytest.raises(ConfigError, match="Unknown config key 'system.widget.colour'"):
        build_module("test-config-widget", {"colour": 1}, "system.widget")
