"""Memory presets: each preset's resolved config, its memory estimate under the budget, merge order, round trip."""
import os

import pytest
from omegaconf import OmegaConf

from threestudio.utils.config import ConfigError, dump_config, load_config
from threestudio.utils.memory_estimate import GB, estimate_peak_bytes
from threestudio.utils.presets import PRESET_BUDGET_GB, PRESET_NAMES, next_preset_down, preset_for_memory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = {
    "mvdream": (os.path.join(REPO, "configs", "mvdream-sd21.yaml"),
                ["system.prompt_processor.prompt=a cat", "system.guidance.pretrained_model_name_or_path=x.pt"]),
    "sv3d": (os.path.join(REPO, "configs", "sv3d-image-to-3d.yaml"),
             ["data.image_path=x.png", "system.guidance.pretrained_model_name_or_path=x.safetensors"]),
}
# (batch phases, phase-2 render size, VAE checkpointing) per MVDream preset, as documented in presets.py
MVDREAM = {"80gb": ([8, 4], 256, False), "48gb": ([8, 4], 256, True), "24gb": ([8, 4], 176, True),
           "12gb": ([8, 4], 112, True), "8gb": ([4, 4], 80, True)}
# (grad frames, VAE chunk, block checkpointing, orbit render, ref view, image size, cfg batched) per SV3D preset
SV3D = {"80gb": (0, 4, False, 128, 128, 576, True), "48gb": (12, 4, False, 128, 128, 576, True),
        "24gb": (8, 2, True, 64, 128, 576, True), "12gb": (4, 1, True, 64, 64, 576, False),
        "8gb": (2, 1, True, 64, 64, 352, False)}


def resolved(family, *extra):
    path, cli = RECIPES[family]
    cfg = load_config(path, cli_args=cli + list(extra))
    return cfg, OmegaConf.to_container(OmegaConf.structured(cfg))


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_mvdream_preset_resolves_and_fits(preset):
    cfg, data = resolved("mvdream", f"preset={preset}")
    batch, size, ckpt = MVDREAM[preset]
    assert cfg.data["batch_size"] == batch
    assert cfg.data["width"] == [64, size] and cfg.data["height"] == [64, size]
    assert cfg.system["guidance"]["gradient_checkpointing"] is ckpt
    assert cfg.system["guidance"]["half_precision_weights"] is True
    assert cfg.preset_applied == preset and cfg.preset is None
    assert estimate_peak_bytes(data)["peak"] / GB <= PRESET_BUDGET_GB[preset] - 0.5


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_sv3d_preset_resolves_and_fits(preset):
    cfg, data = resolved("sv3d", f"preset={preset}")
    g = cfg.system["guidance"]
    got = (g["grad_frames"], g["vae_chunk_size"], g["vae_gradient_checkpointing"], cfg.data["orbit_height"],
           cfg.data["height"], g["image_size"], g["cfg_batched"])
    assert got == SV3D[preset]
    assert cfg.data["orbit_width"] == cfg.data["orbit_height"] and g["vae_checkpoint_chunks"] is True
    assert estimate_peak_bytes(data)["peak"] / GB <= PRESET_BUDGET_GB[preset] - 0.5


def test_presets_are_ordered_by_memory():
    for family in RECIPES:
        peaks = [estimate_peak_bytes(resolved(family, f"preset={p}")[1])["peak"] for p in PRESET_NAMES]
        assert peaks == sorted(peaks), family


def test_estimate_matches_the_documented_sv3d_plan():
    # sv3d_memory.py: "grad_frames 8, vae_chunk_size 4 (the config)": VAE 8.6 GB, renderer 16.8 GB (+2.1 ref view)
    parts = estimate_peak_bytes(resolved("sv3d")[1])
    assert parts["vae"] / GB == pytest.approx(8.6, abs=0.05)
    assert parts["renderer"] / GB == pytest.approx(16.8 + 2.1, abs=0.05)
    assert parts["weights"] / GB == pytest.approx(4.48)


def test_command_line_overrides_beat_the_preset():
    cfg, _ = resolved("mvdream", "preset=8gb", "data.width=[32,48]")
    assert cfg.data["width"] == [32, 48] and cfg.data["height"] == [64, 80]


def test_parsed_config_round_trip_does_not_reapply_the_preset(tmp_path):
    cfg, _ = resolved("mvdream", "preset=12gb", "data.width=[64,96]")
    path = tmp_path / "parsed.yaml"
    dump_config(str(path), OmegaConf.structured(cfg))
    again = load_config(str(path))
    assert again.data["width"] == [64, 96] and again.preset_applied == "12gb"
    # a preset given again on the command line applies over the saved values (the OOM advice's resume command)
    down = load_config(str(path), cli_args=["preset=8gb"])
    assert down.data["width"] == [64, 80] and down.preset_applied == "8gb"


def test_bad_presets_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="unknown preset; choose one of 8gb, 12gb, 24gb, 48gb, 80gb"):
        resolved("mvdream", "preset=16gb")
    with pytest.raises(ConfigError, match="memory presets exist for the distillation recipes"):
        load_config(os.path.join(REPO, "configs", "reconstruction-example.yaml"), cli_args=["preset=8gb"])


def test_next_preset_down_and_preset_for_memory():
    assert [next_preset_down(p) for p in PRESET_NAMES] == [None, "8gb", "12gb", "24gb", "48gb"]
    assert next_preset_down(None) == "80gb"
    assert preset_for_memory(80) == "80gb" and preset_for_memory(40) == "24gb" and preset_for_memory(6) == "8gb"


def test_mvdream_estimate_takes_the_heaviest_phase_with_scalar_batches():
    from threestudio.utils.memory_estimate import RENDER_BYTES_PER_RAY

    base = {"system_type": "mvdream-system", "system": {"guidance": {"image_size": 256}}}
    two = estimate_peak_bytes({**base, "data": {"batch_size": 4, "width": [64, 256], "height": [64, 256]}})
    assert two["renderer"] == pytest.approx(4 * 256 * 256 * RENDER_BYTES_PER_RAY)
    one = estimate_peak_bytes({**base, "data": {"batch_size": 4, "width": 256, "height": 256}})
    assert one == two
