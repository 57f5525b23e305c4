"""Text encoding, DDIM schedule and sampling with classifier-free guidance."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvdream import ddim_sample, make_scheduler


def _openclip_penultimate(state, ids, width, layers):
    """OpenCLIP text tower written out from the original weights: blocks 0..L-2, then ln_final (MVDream's layer)."""
    p = "cond_stage_model.model."
    x = F.embedding(ids, state[f"{p}token_embedding.weight"]) + state[f"{p}positional_embedding"]
    n, heads = ids.shape[1], width // 64
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(layers - 1):
        b = f"{p}transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), state[b + "ln_1.weight"], state[b + "ln_1.bias"])
        q, k, v = F.linear(h, state[b + "attn.in_proj_weight"], state[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1) @ v
        att = att.transpose(1, 2).reshape(x.shape)
        x = x + F.linear(att, state[b + "attn.out_proj.weight"], state[b + "attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), state[b + "ln_2.weight"], state[b + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, state[b + "mlp.c_fc.weight"], state[b + "mlp.c_fc.bias"])), state[b + "mlp.c_proj.weight"], state[b + "mlp.c_proj.bias"])
        x = x + h
    return F.layer_norm(x, (width,), state[f"{p}ln_final.weight"], state[f"{p}ln_final.bias"])


def test_encode_prompt_is_openclip_penultimate_layer(tiny_pipe, tiny_state, tiny_spec):
    prompts = ["an astronaut riding a horse, 3d asset", ""]
    ids = tiny_pipe.tokenize(prompts)
    assert ids.shape == (2, 77)
    assert ids[1, :2].tolist() == [49406, 49407] and ids[1, 2:].eq(0).all()  # OpenCLIP pads with id 0
    expected = _openclip_penultimate(tiny_state, ids, tiny_spec.text_width, tiny_spec.text_layers)
    states = tiny_pipe.encode_prompt(prompts)
    assert states.shape == (2, 77, tiny_spec.text_width)
    assert torch.allclose(states, expected, atol=1e-5)


def test_tokenizer_matches_clip_bpe(tiny_pipe):
    ids = tiny_pipe.tokenize(["A DSLR photo of a lion reading the newspaper!!", "word " * 100])
    # Reference ids from OpenCLIP's tokenizer (open_clip.tokenize) for the same prompts.
    assert ids[0, :12].tolist() == [49406, 320, 33740, 1125, 539, 320, 5567, 2337, 518, 8786, 748, 49407]
    assert ids[1, 75:].tolist() == [2653, 49407]  # truncated to 77 with EOS kept last


def test_scheduler_is_mvdream_ddim(tiny_state):
    scheduler = make_scheduler()
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(range(981, 0, -20))
    assert torch.allclose(scheduler.betas, tiny_state["betas"], rtol=1e-5)
    assert torch.allclose(scheduler.alphas_cumprod, tiny_state["alphas_cumprod"], rtol=1e-5)
    assert scheduler.final_alpha_cumprod == pytest.approx(float(tiny_state["alphas_cumprod"][0]))


class _LinearEps:
    """Stand-in UNet: eps = 0.1 x + mean(text state), so conditional and unconditional branches differ."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, encoder_hidden_states, camera, num_views):
        self.calls.append((x.shape[0], camera.shape, num_views))
        eps = 0.1 * x + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=eps)


def test_ddim_cfg_step_matches_formula():
    scheduler, unet = make_scheduler(), _LinearEps()
    x_t = torch.randn(4, 4, 2, 2)
    cond, uncond = torch.full((4, 77, 8), 0.5), torch.full((4, 77, 8), -0.5)
    camera, scale = torch.randn(4, 16), 3.0
    out = ddim_sample(unet, scheduler, cond, uncond, camera, 4, x_t.shape, num_inference_steps=2, guidance_scale=scale, latents=x_t)
    assert unet.calls == [(8, (8, 16), 4)] * 2  # CFG halves in one call, each grouped by object
    ac = scheduler.alphas_cumprod.double()
    x = x_t.double()
    for t, prev in ((501, 1), (1, None)):
        eps = 0.1 * x + (-0.5 + scale * (0.5 - -0.5))
        a, a_prev = ac[t], (ac[prev] if prev is not None else ac[0])
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert torch.allclose(out.double(), x, atol=1e-5)


def test_sampling_is_deterministic_per_seed_with_right_shapes(tiny_pipe):
    def sample(seed, output_type="np", steps=2):
        return tiny_pipe("a chair", num_views=4, height=16, width=16, num_inference_steps=steps, guidance_scale=5.0,
                         generator=torch.Generator().manual_seed(seed), output_type=output_type).images

    first, again, other = sample(7), sample(7), sample(8)
    assert first.shape == (4, 16, 16, 3) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    pil = sample(7, "pil", steps=1)
    assert len(pil) == 4 and pil[0].size == (16, 16)
    latents = sample(7, "latent", steps=1)
    assert latents.shape == (4, 4, 8, 8)


def test_sampling_batches_objects_by_views(tiny_pipe):
    out = tiny_pipe(["a chair", "a lamp"], num_views=2, height=16, width=16, num_inference_steps=1,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="multiples of 2"):
        tiny_pipe("a chair", height=15, width=16, num_inference_steps=1)
