"""The diffusers names the packages import from modules outside diffusers' public API (`from diffusers
import ...` and the documented output classes). diffusers is pinned in requirements.txt; this test says at
once which name or signature moved when the pin is raised."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

# (module, name, parameters the packages pass by name or position)
INTERNALS = [
    ("diffusers.loaders.single_file_utils", "convert_ldm_unet_checkpoint", ("checkpoint", "config")),
    ("diffusers.loaders.single_file_utils", "convert_ldm_vae_checkpoint", ("checkpoint", "config")),
    ("diffusers.loaders.single_file_utils", "convert_open_clip_checkpoint", ("text_model", "checkpoint", "prefix")),
    ("diffusers.loaders.single_file_utils", "convert_ldm_clip_checkpoint", ("checkpoint",)),
    ("diffusers.loaders.single_file_utils", "create_unet_diffusers_config_from_ldm", ("original_config", "checkpoint")),
    ("diffusers.loaders.single_file_utils", "create_vae_diffusers_config_from_ldm", ("original_config", "checkpoint")),
    ("diffusers.models.embeddings", "get_timestep_embedding",
     ("timesteps", "embedding_dim", "flip_sin_to_cos", "downscale_freq_shift")),
    ("diffusers.models.resnet", "SpatioTemporalResBlock", ()),
    ("diffusers.models.attention_processor", "Attention", ()),
    ("diffusers.models.attention_processor", "AttnProcessor2_0", ()),
]


@pytest.mark.parametrize("module,name,params", INTERNALS, ids=[f"{m}.{n}" for m, n, _ in INTERNALS])
def test_internal_names_and_signatures(module, name, params):
    import importlib

    obj = getattr(importlib.import_module(module), name, None)
    assert obj is not None, f"{module}.{name} is gone: adapt the package before raising the diffusers pin"
    if params:
        signature = inspect.signature(obj)
        missing = [p for p in params if p not in signature.parameters]
        assert not missing, f"{module}.{name} lost parameter(s) {missing}"


def test_timestep_embedding_is_the_sgm_sinusoid():
    # sgm's timestep_embedding: [cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / (D/2))
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.5, 3.0])
    dim = 8
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2) / (dim // 2))
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    got = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(got, expected)
