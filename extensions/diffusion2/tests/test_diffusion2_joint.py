"""The joint step on tiny random SV3D_p / SVD-xt: limits of the mixture, VRS, chunking, determinism."""

import pytest
import torch
from sv3d import euler_sample

from diffusion2 import DistContext, ScaleSchedule

VIEWS, FRAMES = 5, 4  # as the conftest's references


def _sampler(pipe, refs, cfg, **overrides):
    cfg.__dict__.update(overrides)
    return pipe.make_sampler(refs[0], refs[1], cfg, DistContext())


def _noise(seed=0):
    return torch.randn(VIEWS, FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_conditions_cover_every_line(tiny_pipe, references, small_cfg):
    s = _sampler(tiny_pipe, references, small_cfg)
    assert s.mv_cond.index == range(FRAMES) and s.vid_cond.index == range(VIEWS)
    assert s.mv_cond.context.shape[0] == FRAMES and s.mv_cond.concat.shape == (FRAMES, 4, 8, 8)
    assert s.mv_cond.ids.shape == (FRAMES, VIEWS, 3) and s.vid_cond.ids.shape == (VIEWS, FRAMES, 3)
    # SV3D_p: [cond_aug, polar, azimuth], input view's azimuth id a full turn as in the reference
    assert s.mv_cond.ids[0, -1, 2].item() == pytest.approx(2 * torch.pi)
    assert torch.equal(s.mv_cond.scales, torch.full((VIEWS,), 2.5))
    assert torch.allclose(s.vid_cond.scales, torch.linspace(1.5, 3.0, FRAMES))
    assert s.vid_cond.ids[0, 0].tolist() == pytest.approx([24.0, 127.0, 0.02])


@pytest.mark.parametrize("only", ["sv3d_p", "svd_xt"])
def test_a_step_with_one_model_weighted_is_that_models_euler_step(tiny_pipe, references, small_cfg, only):
    """w_vid = 0 (s = 1): the joint step is SV3D_p's own Euler step on every column; w_mv = 0 (video weight 1 on
    every view, s = 0): SVD-xt's own step on every row."""
    s = _sampler(tiny_pipe, references, small_cfg, vrs_steps=0)
    if only == "sv3d_p":
        s.schedule = ScaleSchedule("constant", scale=1.0)
        pipe, cond, lines = tiny_pipe.mv, s.mv_cond, (0, FRAMES - 1)
    else:
        s.view_weights = torch.ones(VIEWS, dtype=torch.float64)
        s.schedule = ScaleSchedule("constant", scale=0.0)
        pipe, cond, lines = tiny_pipe.vid, s.vid_cond, (0, VIEWS - 1)
    sigmas = tiny_pipe.sigmas(50)[:2]
    noise = _noise()
    joint = s.sample(noise, sigmas, num_steps=50)
    for k in lines:
        line = noise[:, k] if only == "sv3d_p" else noise[k]
        with torch.no_grad():
            own = euler_sample(lambda x, sig: pipe.guided_denoise(
                x, sig, cond.concat[k : k + 1], cond.context[k : k + 1], cond.ids[k : k + 1], cond.scales), line[None], sigmas)
        got = joint[:, k] if only == "sv3d_p" else joint[k]
        torch.testing.assert_close(got, own[0], atol=1e-5, rtol=1e-6)  # |x| ~ 700 after the first step


def test_mixture_weights_each_view(tiny_pipe, references, small_cfg):
    s = _sampler(tiny_pipe, references, small_cfg)
    x = _noise(2) * 3.0
    sigma = torch.tensor(3.0)
    est = s.model_estimates(x, sigma)
    mixed = s.denoise(x, sigma, 0.6)
    w_vid = (s.view_weights * 0.4).float().view(-1, 1, 1, 1, 1)
    assert torch.allclose(mixed, (1 - w_vid) * est[0] + w_vid * est[1], atol=1e-6)
    assert (est[0] - est[1]).abs().max() > 1e-3  # the two models disagree, so the weights matter


def test_vrs_noise_std_and_redo(tiny_pipe, references, small_cfg):
    """With a denoiser that returns x the Euler step is the identity, so the VRS re-noising is all that moves x."""
    s = _sampler(tiny_pipe, references, small_cfg, vrs_steps=2)
    seen = []

    def fake(x, sigma, scale):
        seen.append(float(sigma))
        return x

    s.denoise = fake
    states = [torch.zeros(21, 25, 4, 8, 8)]
    sigmas = tiny_pipe.sigmas(50)[:4]
    s.sample(states[0], sigmas, torch.Generator().manual_seed(0), num_steps=50, callback=lambda i, j, x: states.append(x.clone()))
    # evaluations: steps 0 and 1 twice (VRS), step 2 once, each redo from the same sigma
    assert seen == pytest.approx([sigmas[0], sigmas[0], sigmas[1], sigmas[1], sigmas[2]])
    for k, i in ((1, 0), (3, 1)):
        diff = states[k] - states[k - 1]
        expect = float(sigmas[i] - sigmas[i + 1])
        assert diff.std().item() == pytest.approx(expect, rel=0.02) and abs(diff.mean().item()) < 0.02 * expect
    assert torch.equal(states[2], states[1]) and torch.equal(states[5], states[4])  # the redos and step 2 add nothing


def test_chunk_size_does_not_change_the_result(tiny_pipe, references, small_cfg):
    s = _sampler(tiny_pipe, references, small_cfg, vrs_steps=1)
    sigmas = tiny_pipe.sigmas(50)[:2]  # one step with its VRS redo

    def run(chunk, seed=5):
        s.chunk = chunk
        return s.sample(_noise(3), sigmas, torch.Generator().manual_seed(seed), num_steps=50)

    a, b = run(2), run(5)  # 2 + 3 UNet calls per evaluation vs 1 + 1
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)
    assert torch.equal(run(5), b)  # seeded and deterministic
    assert (run(5, seed=6) - b).abs().max() > 1e-3  # the VRS noise comes from the generator
