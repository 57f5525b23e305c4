"""SV3D guidance on tiny random sv3d_u / sv3d_p checkpoints in generative-models layout (CPU).

The checkpoints come from `sv3d.tiny` (the sv3d package's test helper: released key layout, narrow sizes).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from threestudio.models.guidance.sv3d_guidance import SV3DGuidance
from threestudio.models.guidance.sv3d_memory import encode_frames, sample_grad_frames, saved_tensor_bytes
from threestudio.utils.config import ConfigError

N = 21
IMAGE_SIZE = 32  # latents 4²


@pytest.fixture(scope="module")
def assets(tmp_path_factory, sv3d_write_rgba):
    from sv3d.tiny import tiny_config, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("sv3d_guidance")
    out = {"image": sv3d_write_rgba(root / "object.png")}
    for version in ("sv3d_u", "sv3d_p"):
        write_tiny_checkpoint(str(root / f"{version}.safetensors"), version, seed=1)
        OmegaConf.save(tiny_config(version), str(root / f"{version}.yaml"))
        out[version] = (str(root / f"{version}.safetensors"), str(root / f"{version}.yaml"))
    return out


def make_guidance(assets, version="sv3d_u", pipeline=None, **overrides):
    """A guidance on the tiny checkpoint (or on an already loaded `pipeline`, to save loading time)."""
    ckpt, yaml = assets[version]
    cfg = {"pretrained_model_name_or_path": ckpt, "original_config": yaml, "cond_image_path": assets["image"],
           "image_size": IMAGE_SIZE}
    cfg.update(overrides)
    return SV3DGuidance(cfg, pipeline=pipeline)


@pytest.fixture(scope="module")
def guidance_u(assets):
    return make_guidance(assets, "sv3d_u")


@pytest.fixture(scope="module")
def guidance_p(assets):
    return make_guidance(assets, "sv3d_p")


def renders(seed=0, size=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(N, size, size, 3, generator=gen).requires_grad_(True)


def fixed_noise(seed=2):
    return torch.randn(N, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=torch.Generator().manual_seed(seed))


def hand_denoised(guidance, z, sigma, eps, ids):
    """CFG denoiser written out from generative-models' definitions: EDM v-prediction scalings, zeroed conditioning for the
    unconditional branch, triangle scale 1 at frames 0 and 20, 2.5 at frame 10."""
    pipe = guidance.pipe
    x = (z + sigma * eps)[None]
    c_in, c_skip, c_out = 1 / math.sqrt(sigma ** 2 + 1), 1 / (sigma ** 2 + 1), -sigma / math.sqrt(sigma ** 2 + 1)
    c_noise = torch.tensor([0.25 * math.log(sigma)])
    concat = guidance.cond_latent[:, None].expand(1, N, -1, -1, -1)
    outs = []
    for cc, ctx in ((torch.zeros_like(concat), torch.zeros_like(guidance.context)), (concat, guidance.context)):
        v = pipe.unet(torch.cat([x * c_in, cc], dim=2), c_noise, ctx, ids).sample
        outs.append(v * c_out + x * c_skip)
    uncond, cond = outs
    scales = torch.tensor([1.0 + 1.5 * (1 - abs(i - 10) / 10) for i in range(N)]).view(1, N, 1, 1, 1)
    return (uncond + scales * (cond - uncond))[0]


def hand_latents(guidance, rgb):
    x = F.interpolate(rgb.permute(0, 3, 1, 2) * 2 - 1, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                      align_corners=False)
    return guidance.pipe.vae.encode(x).latent_dist.mean * 0.18215


def test_loss_and_gradient_equal_the_formula(guidance_u):
    sigma, eps = 0.8, fixed_noise()
    rgb = renders()
    out = guidance_u(rgb, sigma=sigma, noise=eps)
    out["loss_sds"].backward()

    rgb_hand = rgb.detach().clone().requires_grad_(True)
    z = hand_latents(guidance_u, rgb_hand)
    ids = torch.full((1, N, 1), 1e-5)  # sv3d_u: cond_aug per frame
    with torch.no_grad():
        d = hand_denoised(guidance_u, z.detach(), sigma, eps, ids)
    loss = 0.5 * ((z.detach() - d) ** 2).sum() / N
    (grad,) = torch.autograd.grad(z, rgb_hand, grad_outputs=(z.detach() - d) / N)

    assert out["loss_sds"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(rgb.grad, grad, rtol=1e-4, atol=1e-7)
    assert rgb.grad.abs().sum() > 0
    assert out["grad_norm"].item() == pytest.approx((z.detach() - d).norm().item(), rel=1e-5)


def test_condition_is_cached_from_the_preprocessed_image(guidance_u, assets):
    from sv3d import image_to_tensor, preprocess_orbit_image

    x = image_to_tensor(preprocess_orbit_image(assets["image"], None, 576))
    small = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    noise = torch.randn(small.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latent = guidance_u.pipe.vae.encode(small + 1e-5 * noise).latent_dist.mode()  # not scaled
        context = guidance_u.pipe.encode_image(x)
    assert torch.allclose(guidance_u.cond_latent, latent, atol=1e-6)
    assert torch.allclose(guidance_u.context, context, atol=1e-6)
    assert guidance_u.context.shape == (1, 1, 32)


def test_frame_subset_keeps_the_value_and_scales_the_gradient(guidance_u):
    """The subset's gradient is the full one scaled by N/k up to float32 reduction order, not exactly: the VAE
    then encodes the frames in other batches (with and without a graph), and oneDNN's convolutions sum in an
    order that depends on the batch. The test measures that floor with the same full computation split into
    other VAE chunks, and requires the subset's difference to be of that size (a real error would be larger).
    Element-wise rtol fails on some machines for the smallest gradients, so errors are relative to the maximum."""
    sigma, eps = 1.7, fixed_noise(3)

    def gradient(**kwargs):
        rgb = renders(4)
        out = guidance_u(rgb, sigma=sigma, noise=eps, **kwargs)
        out["loss_sds"].backward()
        return out["loss_sds"].item(), rgb.grad

    full_loss, full = gradient()
    frames = torch.tensor([3, 12])
    sub_loss, sub = gradient(grad_frames=frames)
    assert sub_loss == pytest.approx(full_loss, rel=1e-5)
    others = [i for i in range(N) if i not in (3, 12)]
    assert sub[others].abs().max() == 0
    chunk_size = guidance_u.cfg.vae_chunk_size
    guidance_u.cfg.vae_chunk_size = 4
    try:
        _, full_rechunked = gradient()
    finally:
        guidance_u.cfg.vae_chunk_size = chunk_size
    scale = full.abs().max()
    subset_error = float((sub[frames] - full[frames] * N / 2).abs().max() / scale)
    reduction_order_floor = float((full_rechunked - full).abs().max() / scale)
    assert subset_error < 1e-4
    assert subset_error <= 20 * reduction_order_floor + 1e-6, (subset_error, reduction_order_floor)


def test_chunked_checkpointed_encoding_equals_plain(assets, guidance_u):
    chunked = make_guidance(assets, "sv3d_u", vae_chunk_size=4, vae_checkpoint_chunks=True,
                            vae_gradient_checkpointing=True, cfg_batched=False)
    sigma, eps = 0.5, fixed_noise(5)
    a, b = renders(6), renders(6)
    la = guidance_u(a, sigma=sigma, noise=eps)["loss_sds"]
    lb = chunked(b, sigma=sigma, noise=eps)["loss_sds"]
    la.backward()
    lb.backward()
    assert lb.item() == pytest.approx(la.item(), rel=1e-5)
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_encode_frames_keeps_graphs_only_for_gradient_frames():
    weight = torch.nn.Parameter(torch.tensor(2.0))
    images = torch.arange(5.0).view(5, 1, 1, 1).requires_grad_(True)
    out = encode_frames(lambda x: x * weight, images, torch.tensor([1, 3]), chunk_size=1)
    assert torch.equal(out.detach().flatten(), torch.arange(5.0) * 2)
    out.sum().backward()
    assert images.grad.flatten().tolist() == [0, 2, 0, 2, 0]
    with pytest.raises(ValueError, match="must index"):
        encode_frames(lambda x: x, images, torch.tensor([7]))


def test_sampled_gradient_frames_are_distinct_and_seeded():
    torch.manual_seed(0)
    a = sample_grad_frames(21, 5)
    torch.manual_seed(0)
    b = sample_grad_frames(21, 5)
    assert torch.equal(a, b) and len(set(a.tolist())) == 5 and a.tolist() == sorted(a.tolist())
    assert sample_grad_frames(21, 0) is None and sample_grad_frames(21, 21) is None


def test_sv3d_p_cameras_reach_the_unet(guidance_p):
    elevation = torch.full((N,), 20.0)
    azimuth = torch.tensor([(i + 1) * 360.0 / N for i in range(N)]) % 360
    ids = guidance_p.camera_ids(elevation, azimuth)
    assert ids.shape == (1, N, 3)  # cond_aug, polar, azimuth per frame
    assert torch.allclose(ids[0, :, 1], torch.full((N,), math.radians(70.0)))
    assert torch.allclose(ids[0, :, 2], torch.deg2rad(azimuth), atol=1e-6)
    assert ids[0, -1, 2] == 0  # the last frame is the input view
    rgb, eps = renders(7), fixed_noise(8)
    base = guidance_p(rgb, elevation=elevation, azimuth=azimuth, sigma=1.0, noise=eps)["loss_sds"]
    moved = guidance_p(rgb, elevation=elevation + 30, azimuth=azimuth, sigma=1.0, noise=eps)["loss_sds"]
    assert base.item() != pytest.approx(moved.item(), rel=1e-6)


def test_weightings_and_sigma_schedule(assets, guidance_u):
    g = make_guidance(assets, "sv3d_u", guidance_u.pipe, weighting="sds", sigma_min=0.5, sigma_max=[0, 8.0, 2.0, 100])
    u = guidance_u
    sigma, eps = 2.0, fixed_noise(9)
    rgb = renders(10)
    ratio = g(rgb, sigma=sigma, noise=eps)["loss_sds"] / u(rgb, sigma=sigma, noise=eps)["loss_sds"]
    assert ratio.item() == pytest.approx(1 / sigma, rel=1e-5)
    g.do_update_step(0, 50)
    assert (g.sigma_min, g.sigma_max) == (0.5, pytest.approx(5.0))
    torch.manual_seed(0)
    draws = [g.sample_sigma() for _ in range(200)]
    assert 0.5 <= min(draws) and max(draws) <= 5.0
    # log-uniform: about half of the draws below the geometric mean
    assert 0.35 < np.mean(np.array(draws) < math.sqrt(0.5 * 5.0)) < 0.65
    bad = make_guidance(assets, "sv3d_u", guidance_u.pipe, sigma_min=3.0, sigma_max=[0, 8.0, 2.0, 100])
    with pytest.raises(ConfigError, match="sigma_min"):
        bad.do_update_step(0, 100)


def test_guidance_keeps_no_weights_in_its_state(guidance_u):
    assert list(guidance_u.state_dict()) == [] and list(guidance_u.parameters()) == []
    guidance_u.train()
    for module in (guidance_u.pipe.unet, guidance_u.pipe.vae, guidance_u.pipe.image_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_sample_orbit_shapes(guidance_u):
    frames = guidance_u.sample_orbit(num_steps=2, seed=1)
    assert frames.shape == (N, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert 0 <= frames.min() and frames.max() <= 1
    again = guidance_u.sample_orbit(num_steps=2, seed=1)
    assert torch.equal(frames, again)


def test_saved_tensor_bytes_counts_activations():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    _, n = saved_tensor_bytes(lambda: torch.relu(conv(x)))
    # the conv keeps its input (2·3·16·16 floats); relu keeps its output (2·8·16·16 floats)
    assert n == (2 * 3 * 16 * 16 + 2 * 8 * 16 * 16) * 4 + conv.weight.numel() * 4


def test_bad_inputs(assets, guidance_u, tmp_path):
    # building reads nothing (--test/--export never need the prior); loading it names the key
    missing = make_guidance(assets, pretrained_model_name_or_path=str(tmp_path / "missing.safetensors"))
    assert not missing.prior.loaded
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path.*does not exist"):
        missing.load_prior()
    with pytest.raises(ConfigError, match="weighting"):
        make_guidance(assets, pipeline=guidance_u.pipe, weighting="karras")
    with pytest.raises(ValueError, match=r"\(N=21, H, W, 3\)"):
        guidance_u(torch.rand(4, 16, 16, 3))
    rgb = Image.new("RGB", (32, 32), (255, 0, 0))
    rgb.save(tmp_path / "rgb.png")
    with pytest.raises(ConfigError, match="RGBA"):
        make_guidance(assets, pipeline=guidance_u.pipe, cond_image_path=str(tmp_path / "rgb.png")).load_prior()


def test_sv3d_u_warns_about_other_orbits(guidance_u, caplog):
    standard = torch.tensor([(i + 1) * 360.0 / N for i in range(N)]) % 360
    guidance_u.camera_ids(None, standard)
    assert "fixed orbit" not in caplog.text
    guidance_u.camera_ids(None, standard + 7.0)
    assert "fixed orbit" in caplog.text and "7.0" in caplog.text
