"""Memory presets of the distillation recipes: `preset=8gb|12gb|24gb|48gb|80gb` on the command line.

A preset is a set of `key=value` overrides chosen per system (batch, render resolution, prior precision, the SV3D
memory plan) so that the estimate of `threestudio/utils/memory_estimate.py` stays under ~90% of the budget; the
merge order is recipe YAML < preset < the user's own `key=value` arguments, so anything can still be overridden.
Estimated peaks (GB, CUDA, pure-PyTorch renderer; `python -m threestudio.doctor --config X preset=...` prints them):

  MVDream (configs/mvdream-sd21.yaml: 64² phase, then the 2nd phase below; image_size 256, fp16 prior)
  preset   batch (phase 1, 2)  phase-2 render  VAE checkpointing   est. peak GB
  80gb     8, 4                256²            no                  37.2
  48gb     8, 4                256²            yes                 36.4
  24gb     8, 4                176²            yes                 18.7
  12gb     8, 4                112²            yes                  9.3
  8gb      4, 4                80²             yes                  6.1

  SV3D (configs/sv3d-image-to-3d.yaml: 21-frame orbit, fp16 prior)
  preset  grad frames  VAE chunk  block ckpt  orbit render  ref view  image_size  cfg batched  est. peak GB
  80gb    21           4          no          128²          128²      576         yes          59.3
  48gb    12           4          no          128²          128²      576         yes          40.4
  24gb    8            2          yes         64²           128²      576         yes          16.9
  12gb    4            1          yes         64²           64²       576         no           10.1
  8gb     2            1          yes         64²           64²       352         no            7.2

Every preset's estimate stays under its budget minus 0.5 GB (CUDA context); tests/app/test_presets.py checks it.
8gb SV3D leaves SV3D's training resolution (576²): 352² (44² latents) is the price of fitting its 4.5 GB of weights.
The prior runs in fp16 in every preset (`half_precision_weights`): fp32 doubles its weights and activations for
no gain in SDS quality. The figures are estimates from measured per-unit costs (see memory_estimate.py); the
renderer term is an upper bound (tinycudann keeps less), so a preset may leave memory unused on a CUDA build.
"""
from __future__ import annotations

from typing import Optional

from threestudio.utils.memory_estimate import family_of

PRESET_NAMES = ("8gb", "12gb", "24gb", "48gb", "80gb")  # ascending
PRESET_BUDGET_GB = {"8gb": 8, "12gb": 12, "24gb": 24, "48gb": 48, "80gb": 80}


def _mvdream(first_batch: int, width: int, checkpointing: bool) -> dict:
    return {
        "data.batch_size": [first_batch, 4], "data.width": [64, width], "data.height": [64, width],
        "system.guidance.half_precision_weights": True,
        "system.guidance.gradient_checkpointing": checkpointing,
    }


def _sv3d(grad_frames: int, chunk: int, block_ckpt: bool, render: int, ref: int, image_size: int,
          cfg_batched: bool) -> dict:
    return {
        "data.height": ref, "data.width": ref,
        "system.guidance.grad_frames": grad_frames, "system.guidance.vae_chunk_size": chunk,
        "system.guidance.vae_checkpoint_chunks": True, "system.guidance.vae_gradient_checkpointing": block_ckpt,
        "data.orbit_height": render, "data.orbit_width": render,
        "system.guidance.image_size": image_size, "system.guidance.cfg_batched": cfg_batched,
        "system.guidance.half_precision_weights": True,
    }


PRESETS: dict[str, dict[str, dict]] = {
    "mvdream": {
        "80gb": _mvdream(8, 256, False),
        "48gb": _mvdream(8, 256, True),
        "24gb": _mvdream(8, 176, True),
        "12gb": _mvdream(8, 112, True),
        "8gb": _mvdream(4, 80, True),
    },
    "sv3d": {
        "80gb": _sv3d(0, 4, False, 128, 128, 576, True),
        "48gb": _sv3d(12, 4, False, 128, 128, 576, True),
        "24gb": _sv3d(8, 2, True, 64, 128, 576, True),
        "12gb": _sv3d(4, 1, True, 64, 64, 576, False),
        "8gb": _sv3d(2, 1, True, 64, 64, 352, False),
    },
}


class PresetError(ValueError):
    """An unknown preset name, or a preset for a system that has none."""


def preset_overrides(system_type: str, preset: str) -> dict:
    """The dotted-key overrides of `preset` for `system_type` (mvdream-system, sv3d-system)."""
    name = str(preset).lower()
    if name not in PRESET_NAMES:
        raise PresetError(f"preset={preset}: unknown preset; choose one of {', '.join(PRESET_NAMES)}.")
    family = family_of(system_type)
    if family is None:
        raise PresetError(f"preset={preset}: memory presets exist for the distillation recipes (mvdream-system, "
                          f"sv3d-system), not for system_type '{system_type}'. Remove preset=.")
    return dict(PRESETS[family][name])


def next_preset_down(preset: Optional[str]) -> Optional[str]:
    """The next smaller preset (None below 8gb); for no preset, the largest one (80gb)."""
    if preset is None:
        return PRESET_NAMES[-1]
    index = PRESET_NAMES.index(str(preset).lower())
    return PRESET_NAMES[index - 1] if index > 0 else None


def preset_for_memory(total_gb: float) -> str:
    """The largest preset whose budget fits `total_gb` of device memory (8gb when none does)."""
    fitting = [p for p in PRESET_NAMES if PRESET_BUDGET_GB[p] <= total_gb + 0.5]
    return fitting[-1] if fitting else PRESET_NAMES[0]
