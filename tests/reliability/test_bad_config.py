"""Bad settings stop the run before any work, naming the key (exit code 2, nothing written)."""
import os

import pytest

from conftest import REPO

CASES = [
    # (overrides, expected message) — before: Lightning TypeError / crash inside Lightning or tensor code
    (["trainer.max_stepz=3"], "Unknown config key 'trainer.max_stepz' for Trainer. Did you mean 'trainer.max_steps'?"),
    (["trainer.max_steps=abc"], "Invalid value for 'trainer.max_steps': 'abc' is not of type int"),
    (["trainer.max_steps=-5"], "trainer: `max_steps` must be a non-negative integer or -1"),
    (["trainer.callbacks=[]"], "trainer.callbacks: set by launch.py"),
    (["checkpoint.save_lst=true"], "Unknown config key 'checkpoint.save_lst' for ModelCheckpoint. Did you mean "
                                   "'checkpoint.save_last'?"),
    (["checkpoint.every_n_train_steps=x"], "Invalid value for 'checkpoint.every_n_train_steps': 'x'"),
    (["checkpoint.every_n_train_steps=-1"], "checkpoint: Invalid value for every_n_train_steps=-1"),
    (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
    (["data.height=-4"], "data.height must be a positive integer, got -4"),
    (["data.width=[4,0]", "data.height=[4,4]", "data.batch_size=[2,2]", "data.resolution_milestones=[2]"],
     "data.width must be a positive integer (each entry), got [4, 0]"),
    (["data.eval_width=0"], "data.eval_width must be a positive integer, got 0"),
    (["data.n_test_views=0"], "data.n_test_views must be a positive integer, got 0"),  # silently wrote nothing
    (["data.resolution_milestones=[3,2]", "data.height=[4,4,4]", "data.width=[4,4,4]", "data.batch_size=[2,2,2]"],
     "data.resolution_milestones must increase, got [3, 2]"),
    # before: a TypeError/ConfigError raised inside trainer.fit, after the trial folder was written
    (["system.optimizer.args.lr=abc"], "system.optimizer.args:"),
    (["system.scheduler.name=NoSuchLR"], "system.scheduler.name: 'NoSuchLR' is not a scheduler"),
    (["system.loss.lambda_reg=[0,1]"], "system.loss.lambda_reg: Schedule [0, 1] must be"),
    (["system.loss.lambda_reg=abc"], "system.loss.lambda_reg: 'abc' is not a number or a schedule"),
    (["system.loss.lambda_reg=[0,1.0,0.5,10,0.2,5]"], "system.loss.lambda_reg: the steps of schedule"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[c[0][0] for c in CASES])
def test_bad_setting_fails_before_any_work(launch, tmp_path, overrides, message):
    code, err = launch("--train", f"exp_root_dir={tmp_path}", *overrides)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []  # no trial folder, no config, no checkpoint


def test_a_bug_is_not_reported_as_a_configuration_error(launch, tmp_path):
    """Before: every ValueError became "Configuration error: ..." without a traceback."""
    with pytest.raises(ValueError, match="a bug in the system's own code"):
        launch("--train", f"exp_root_dir={tmp_path}", "system.bug_in_configure=true")
    assert os.listdir(tmp_path) == []  # the empty trial folder is removed again


@pytest.mark.parametrize("key,value,message", [
    ("pos_encoding_config", {"otype": "HashGrid", "n_levels": 2, "bogus": 3},
     "Unknown key 'system.geometry.pos_encoding_config.bogus' for the HashGrid encoding"),
    ("pos_encoding_config", {"otype": "HashGrid", "n_levels": 0},
     "Invalid value for 'system.geometry.pos_encoding_config.n_levels': 0 must be a positive integer"),
    ("mlp_network_config", {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layer": 1},
     "Unknown key 'system.geometry.mlp_network_config.n_hidden_layer' for the VanillaMLP network"),
    ("mlp_network_config", {"otype": "FullyFusedMLP", "n_neurons": "64"},
     "Invalid value for 'system.geometry.mlp_network_config.n_neurons': '64' must be a positive integer"),
])
def test_tcnn_style_network_dicts_are_validated(key, value, message):
    """Before: `...pos_encoding_config.bogus=3` was accepted and ignored."""
    from threestudio.utils.base import build_module
    from threestudio.utils.config import ConfigError

    with pytest.raises(ConfigError) as info:
        build_module("implicit-volume", {key: value}, "system.geometry")
    assert message in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    # before: failed only after training and the test video
    ("system.exporter.texture_size=0", "system.exporter.texture_size must be positive, got 0"),
    # before: accepted and ignored
    ("system.geometry.pos_encoding_config.bogus=3",
     "Unknown key 'system.geometry.pos_encoding_config.bogus' for the HashGrid encoding"),
])
def test_lift3d_settings_are_checked_before_training(launch, tmp_path, override, message):
    config = os.path.join(REPO, "configs", "reconstruction-example.yaml")
    code, err = launch("--train", f"exp_root_dir={tmp_path}", override,
                       "system.geometry.pos_encoding_config.log2_hashmap_size=8", config=config)
    assert code == 2, err
    assert message in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("config,overrides,message", [
    # before: the lazily loaded prior failed at the first training step, after the trial record was written
    ("mvdream-sd21.yaml", ["system.prompt_processor.prompt=a cat",
                           "system.guidance.pretrained_model_name_or_path=/nonexistent/sd-v2.1-base-4view.pt"],
     "system.guidance.pretrained_model_name_or_path: '/nonexistent/sd-v2.1-base-4view.pt' does not exist"),
    ("sv3d-image-to-3d.yaml", ["data.image_path=load/example_primitives/train/r_000.png",
                               "system.guidance.pretrained_model_name_or_path=/nonexistent/sv3d_u.safetensors"],
     "system.guidance.pretrained_model_name_or_path: checkpoint '/nonexistent/sv3d_u.safetensors' does not exist"),
])
def test_missing_prior_checkpoint_fails_before_any_work(launch, tmp_path, monkeypatch, config, overrides, message):
    monkeypatch.chdir(REPO)
    code, err = launch("--train", f"exp_root_dir={tmp_path}", *overrides,
                       "system.geometry.pos_encoding_config.log2_hashmap_size=8",
                       config=os.path.join(REPO, "configs", config))
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []
