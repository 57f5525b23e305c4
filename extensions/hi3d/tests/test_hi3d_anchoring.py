"""Stage-2 anchoring weights against the formula, and the anchored sampler's first step."""

import math

import torch

from hi3d import anchor_weights, anchored_pre_step, refine_orbit


def test_anchor_weights_formula_in_radians():
    a = anchor_weights(25, 40.0)
    for i in (0, 1, 7, 24):
        assert a[i].item() == (0.5 * (1 + math.cos(i / 25))) ** 40
    assert a[0] == 1.0 and 6.8e-5 < a[24] < 6.9e-5  # no pi: (0.5 (1 + cos 0.96))^40, never 0
    assert torch.all(a[1:] < a[:-1])


def test_pre_step_blends_towards_the_anchor():
    anchor, eps0, x = torch.full((1, 2, 4, 3, 3), 2.0), torch.ones(1, 2, 4, 3, 3), torch.zeros(1, 2, 4, 3, 3)
    hook = anchored_pre_step(anchor, eps0, 25, 40.0)
    torch.testing.assert_close(hook(0, x, torch.tensor(5.0)), anchor + 5.0 * eps0)  # a_0 = 1: fully replaced
    a3 = (0.5 * (1 + math.cos(3 / 25))) ** 40
    torch.testing.assert_close(hook(3, x, torch.tensor(5.0)), torch.full_like(x, 7.0 * a3))


def test_refiner_first_state_is_anchor_plus_sigma_noise(pipes, monkeypatch):
    """The first denoiser call sees x = z_stage1 + sigma_0 * eps0 (not sqrt(1 + sigma_0^2) * eps0)."""
    pipe = pipes("stage2")
    seen = []
    import sv3d.pipeline as sp

    real = sp.edm_denoise

    def spy(unet, x, sigma, concat, context, ids):
        seen.append((x.clone(), sigma.clone()))
        return real(unet, x, sigma, concat, context, ids)

    monkeypatch.setattr(sp, "edm_denoise", spy)
    frames = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    refine_orbit(pipe, frames, num_steps=2, seed=11)
    gen = torch.Generator().manual_seed(11)
    eps0 = torch.randn((1, 2, 4, 12, 12), generator=gen)
    anchors = pipe.encode_first_stage(frames, gen)[None]
    x0, sigma = seen[0]
    torch.testing.assert_close(x0[:1], anchors + sigma[0] * eps0, atol=1e-3, rtol=1e-5)
