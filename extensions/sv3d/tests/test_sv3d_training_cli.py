"""Command lines: the SVD-MV seed's spelling on its bundled dummy data, accelerate/DeepSpeed configs, LoRA runs,
config errors."""

import glob
import os
import subprocess
import sys

import pytest
import torch
import yaml

from sv3d.train import main as train_main

SV3D_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(SV3D_ROOT))
SVD_MV = os.path.join(REPO, "extensions", "svd_mv")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    paths = [os.path.join(REPO, "extensions", "sv3d"), os.path.join(REPO, "extensions", "mvdream")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_seed_command_runs_on_the_bundled_dummy_data(tiny_svd_xt, tmp_path):
    out = tmp_path / "seed"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_config/cpu.yaml",
           "main.py", "train", "train_config/train_local_svd_mv.yaml",
           f"pretrained={tiny_svd_xt}", f"output_dir={out}", "max_steps=2", "data.resolution=32",
           "validation.num_steps=2", "validation.num_objects=1", "validation.every_n_steps=2", "progress_bar=false"]
    proc = subprocess.run(cmd, cwd=SVD_MV, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recipe svd_mv, 1 process(es)" in proc.stdout and "2 objects, global batch 2" in proc.stdout
    cfg = __import__("json").load(open(out / "config.json"))
    assert cfg["data"]["num_frames"] == 7 and cfg["loss"]["weighting"] == "svd_mv_reference" and cfg["loss"]["cfg_mode"] == "batch"
    assert cfg["optim"]["lr_scheduler"] == "constant_with_warmup" and cfg["gradient_checkpointing"] is True
    assert sorted(os.listdir(out / "checkpoints")) == ["step_0000001", "step_0000002"]
    assert os.listdir(out / "validation") == ["step_0000002"]
    assert sorted(os.listdir(out / "validation" / "step_0000002")) == ["00.mp4", "00_grid.png"]
    assert glob.glob(str(out / "tb_logs" / "*" / "events.out.tfevents.*"))
    assert os.path.isfile(out / "export" / "step_0000002" / "model.safetensors")


def test_dummy_data_is_small_and_in_the_reference_layout():
    meta = [yaml.safe_load(line) for line in open(os.path.join(SVD_MV, "svd_meta.jsonl")) if line.strip()]
    assert len(meta) == 2 and all(len(m["image_path"]) == 21 == len(m["elevation"]) for m in meta)
    files = glob.glob(os.path.join(SVD_MV, "dummy_objaverse", "*", "*.png"))
    assert len(files) == 42 and sum(os.path.getsize(f) for f in files) < 400_000


def test_accelerate_configs_are_valid():
    """Every shipped config parses as accelerate's ClusterConfig and passes `accelerate launch`'s own validation;
    the DeepSpeed ones name ZeRO-2/3 with bf16 and valid offload devices (DeepSpeed itself needs CUDA, so these
    configs are run by the GPU check script, not here)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    files = sorted(glob.glob(os.path.join(SV3D_ROOT, "accelerate_config", "*.yaml")))
    names = {os.path.basename(f) for f in files}
    assert {"deepspeed_zero_2_one_gpu.yaml", "deepspeed_zero_2.yaml", "deepspeed_zero_2_multi_node.yaml", "deepspeed_zero_3.yaml",
            "deepspeed_zero_3_cpu.yaml", "deepspeed_zero_3_multi_node.yaml", "ddp_multi_gpu.yaml", "cpu.yaml",
            "cpu_multi_process.yaml"} <= names
    parser = launch_command_parser()
    launch_flags = {a.dest for a in parser._actions}
    for f in files:
        raw = yaml.safe_load(open(f))
        cfg = load_config_from_file(f)
        args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", f, "-m", "sv3d.train"]))
        assert args.num_processes == raw["num_processes"] >= 1 and cfg.num_machines == raw["num_machines"]
        if raw["distributed_type"] == "DEEPSPEED":
            ds = raw["deepspeed_config"]
            assert set(ds) <= launch_flags, set(ds) - launch_flags
            assert args.use_deepspeed and int(args.zero_stage) == ds["zero_stage"] in (2, 3)
            assert raw["mixed_precision"] == "bf16" and args.mixed_precision == "bf16"
            assert ds["offload_optimizer_device"] in ("none", "cpu", "nvme") and ds["offload_param_device"] in ("none", "cpu", "nvme")
            assert ds["gradient_accumulation_steps"] == 1 and ds["zero3_init_flag"] is False
            if raw["num_machines"] > 1:
                assert raw["num_processes"] % raw["num_machines"] == 0 and "main_process_ip" in raw
    assert os.path.realpath(os.path.join(SVD_MV, "accelerate_config")) == os.path.realpath(os.path.join(SV3D_ROOT, "accelerate_config"))


def test_config_errors_name_the_key(tiny_svd_xt, dummy_orbits, capsys):
    assert train_main([f"pretrained={tiny_svd_xt}", f"data.root={dummy_orbits}", "loss.weigting=edm"]) == 2
    assert "loss.weigting" in capsys.readouterr().err
    assert train_main([f"data.root={dummy_orbits}"]) == 2
    assert "pretrained" in capsys.readouterr().err
    assert train_main([f"pretrained={tiny_svd_xt}", f"data.root={dummy_orbits}", "loss.weighting=sgm"]) == 2
    assert "loss.weighting must be one of" in capsys.readouterr().err
    assert train_main([f"pretrained={tiny_svd_xt}", f"data.root={dummy_orbits}", "recipe=nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_run_trains_adapters_and_exports_merged_weights(tiny_svd_xt, dummy_orbits, tmp_path):
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    from sv3d.training import load_config
    from sv3d.training.trainer import train

    AcceleratorState._reset_state(True)
    cfg = load_config(None, [f"pretrained={tiny_svd_xt}", f"data.root={dummy_orbits}", f"output_dir={tmp_path / 'lora'}",
                             "data.resolution=32", "data.num_frames=3", "max_steps=2", "optim.warmup_steps=0",
                             "optim.learning_rate=1e-2", "lora.enabled=true", "lora.rank=4", "gradient_checkpointing=false",
                             "progress_bar=false", "tensorboard=false"])
    res = train(cfg)
    out, src = load_file(res.export["single_file"]), load_file(tiny_svd_xt)
    changed = {k for k in out if k in src and (out[k].shape != src[k].shape or not torch.equal(out[k], src[k]))}
    prefix = "model.diffusion_model."
    # LoRA deltas merged into attention projections; the re-initialised added embedding trained in full
    assert any(k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) for k in changed)
    assert prefix + "label_emb.0.0.weight" in changed
    allowed = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "label_emb.0.0.weight", "label_emb.0.0.bias",
               "label_emb.0.2.weight", "label_emb.0.2.bias")
    assert all(k.endswith(allowed) for k in changed), sorted(k for k in changed if not k.endswith(allowed))[:5]
    assert not any("lora" in k for k in out)


@pytest.mark.parametrize("name", ["svd_mv", "sv3d_u", "sv3d_p"])
def test_shipped_training_configs_load(name, tmp_path):
    from sv3d.training import ConfigError, load_config

    path = os.path.join(SV3D_ROOT, "train_configs", f"{name}.yaml")
    with pytest.raises(ConfigError, match="pretrained"):
        load_config(path)
    cfg = load_config(path, ["pretrained=x.safetensors", f"data.root={tmp_path}", "data.num_frames=5"])
    assert cfg.recipe == name and cfg.data.num_frames == 5 and cfg.loss.weighting in ("edm", "svd_mv_reference")
