"""EDM denoiser/sampler, per-frame guiders, camera orbits and seeded end-to-end sampling."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sv3d import (
    apply_guidance,
    edm_sigmas,
    edm_v_scalings,
    euler_sample,
    linear_guidance_scales,
    orbit_azimuths_deg,
    orbit_c2w,
    sv3d_p_camera_ids,
    triangle_guidance_scales,
)

IMAGE = 64  # tiny input side (the models are trained at 576)


def test_triangle_guider_per_frame():
    s = triangle_guidance_scales(21, 1.0, 2.5)
    assert s.shape == (21,)
    assert s[0] == pytest.approx(1.0) and s[20] == pytest.approx(1.0) and s[10] == pytest.approx(2.5)
    assert torch.allclose(s, s.flip(0))
    assert torch.allclose(s[1:11] - s[:10], torch.full((10,), 0.15), atol=1e-5)  # linear ramp up


def test_linear_guider_per_frame(tiny_pipes):
    s = linear_guidance_scales(14, 1.0, 2.5)
    assert s[0] == 1.0 and s[-1] == 2.5 and torch.allclose(s[1:] - s[:-1], torch.full((13,), 1.5 / 13), atol=1e-6)
    assert torch.allclose(tiny_pipes("svd").guidance_scales(14), s)
    assert torch.allclose(tiny_pipes("sv3d_u").guidance_scales(21), triangle_guidance_scales(21, 1.0, 2.5))


def test_apply_guidance_scales_each_frame():
    u = torch.zeros(1, 3, 2)
    c = torch.ones(1, 3, 2)
    out = apply_guidance(u, c, torch.tensor([1.0, 2.0, 0.5]))
    assert torch.equal(out[0, :, 0], torch.tensor([1.0, 2.0, 0.5]))


def test_edm_discretisation_and_scalings():
    s = edm_sigmas(50, 0.002, 700.0, 7.0)
    assert s.shape == (51,) and s[-1] == 0
    assert s[0].item() == pytest.approx(700.0, rel=1e-5) and s[49].item() == pytest.approx(0.002, rel=1e-4)
    assert torch.all(s[1:] < s[:-1])
    mid = (700 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 700 ** (1 / 7))) ** 7
    assert edm_sigmas(3)[1].item() == pytest.approx(mid, rel=1e-5)
    c_skip, c_out, c_in, c_noise = edm_v_scalings(torch.tensor(2.0))
    assert (c_skip.item(), c_out.item(), c_in.item()) == pytest.approx((0.2, -2 / math.sqrt(5), 1 / math.sqrt(5)))
    assert c_noise.item() == pytest.approx(0.25 * math.log(2.0))


def test_euler_reaches_the_data_point_of_a_constant_denoiser():
    target = torch.full((1, 2, 3), 0.7)
    noise = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0))
    seen = []
    out = euler_sample(lambda x, sigma: target.expand_as(x), noise, edm_sigmas(4), lambda i, x, d: seen.append(i))
    assert torch.allclose(out, target, atol=1e-5)
    assert seen == [0, 1, 2, 3]


def test_orbit_azimuths_and_sv3d_p_ids():
    az = orbit_azimuths_deg(21)
    assert az[-1] == 0 and az[0] == pytest.approx(360 / 21) and az[9] == pytest.approx(10 * 360 / 21)
    ids = sv3d_p_camera_ids(10.0, None, 21)
    assert torch.allclose(ids[:, 0], torch.full((21,), math.radians(80.0)))
    assert torch.allclose(ids[:, 1], torch.tensor(np.radians(az), dtype=torch.float32))
    rel = sv3d_p_camera_ids([0, 30, 60], [100.0, 190.0, 40.0], 3)  # azimuths relative to the last (input) view
    assert torch.allclose(rel[:, 1], torch.tensor(np.radians([60.0, 150.0, 0.0]), dtype=torch.float32))
    assert torch.allclose(rel[:, 0], torch.tensor(np.radians([90.0, 60.0, 30.0]), dtype=torch.float32))
    full = sv3d_p_camera_ids(10.0, None, 21, last_azimuth_full_turn=True)  # Diffusion²'s id of the input view
    assert full[-1, 1].item() == pytest.approx(2 * math.pi) and torch.equal(full[:-1], ids[:-1])
    with pytest.raises(ValueError, match="list of 3 values for elevations_deg"):
        sv3d_p_camera_ids([1.0, 2.0], None, 3)


def test_orbit_c2w_convention():
    m = orbit_c2w([0.0, 30.0], [0.0, 90.0], 2.0)
    assert np.allclose(m[0][:3, 3], [2, 0, 0])  # azimuth 0 looks from +x
    assert np.allclose(m[0][:3, 2], [1, 0, 0])  # OpenGL: camera looks along -z, so +z points away from the object
    assert np.allclose(m[0][:3, 1], [0, 0, 1])  # up is world +z
    e = math.radians(30)
    assert np.allclose(m[1][:3, 3], [0, 2 * math.cos(e), 2 * math.sin(e)])
    assert np.allclose(m[1][:3, :3] @ m[1][:3, :3].T, np.eye(3))


@pytest.mark.parametrize("version,frames", [("sv3d_u", 3), ("sv3d_p", 3), ("svd", 2)])
def test_sampling_is_deterministic_per_seed(version, frames, tiny_pipes, rgba_object):
    pipe = tiny_pipes(version)
    image = rgba_object if version != "svd" else Image.new("RGB", (IMAGE, IMAGE), (120, 60, 30))
    a = pipe(image, num_frames=frames, num_steps=2, seed=5, image_size=IMAGE, decoding_t=2)
    b = pipe(image, num_frames=frames, num_steps=2, seed=5, image_size=IMAGE, decoding_t=2)
    c = pipe(image, num_frames=frames, num_steps=2, seed=6, image_size=IMAGE, decoding_t=2)
    assert a.frames.shape == (frames, 3, IMAGE, IMAGE) and a.latents.shape == (frames, 4, IMAGE // 8, IMAGE // 8)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
    assert not torch.equal(a.latents, c.latents)
    assert 0.0 <= a.frames.min() and a.frames.max() <= 1.0
    if version != "svd":
        # the last frame of an orbit is the input view itself
        inp = torch.from_numpy(np.asarray(a.input_image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        assert torch.allclose(a.frames[-1], inp, atol=1e-6)
        assert a.azimuths_deg[-1] == 0.0 and a.elevations_deg == [10.0] * frames


def test_sv3d_p_sampling_follows_the_cameras(tiny_pipes, rgba_object):
    pipe = tiny_pipes("sv3d_p")
    kw = dict(num_frames=3, num_steps=1, seed=1, image_size=IMAGE)
    a = pipe(rgba_object, azimuths_deg=[120.0, 240.0, 0.0], **kw)
    b = pipe(rgba_object, azimuths_deg=[60.0, 240.0, 0.0], **kw)
    assert not torch.equal(a.latents, b.latents)
    assert a.azimuths_deg == pytest.approx([120.0, 240.0, 0.0])


def test_pipeline_is_a_diffusers_pipeline(tiny_pipes, rgba_object):
    from diffusers import DiffusionPipeline

    pipe = tiny_pipes("sv3d_u")
    assert isinstance(pipe, DiffusionPipeline)
    assert set(pipe.components) == {"unet", "vae", "image_encoder"}
    assert pipe.spec.family == "sv3d_u" and pipe.device == torch.device("cpu")
    kw = dict(num_frames=3, num_steps=2, seed=3, image_size=IMAGE, decoding_t=2)
    steps = []
    out = pipe(rgba_object, callback=lambda i, x, denoised: steps.append((i, tuple(x.shape))), **kw)
    assert [i for i, _ in steps] == [0, 1] and steps[0][1] == (1, 3, 4, IMAGE // 8, IMAGE // 8)
    frames, latents = pipe(rgba_object, return_dict=False, **kw)
    assert torch.equal(frames, out.frames) and torch.equal(latents, out.latents)
    assert torch.equal(out["frames"], out.frames) and out.to_tuple()[0] is out.frames
    # diffusers' forms of to(): a dtype casts the UNet and the image encoder, the VAE stays float32
    pipe.to(torch.float64)
    try:
        assert pipe.unet.dtype == torch.float64 and pipe.image_encoder.dtype == torch.float64
        assert pipe.vae.dtype == torch.float32
    finally:
        pipe.to("cpu", torch.float32)
    assert pipe.unet.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs a CUDA device")
def test_model_cpu_offload_gives_the_same_orbit(tiny_pipes, rgba_object):
    pipe = tiny_pipes("sv3d_p")
    kw = dict(num_frames=3, num_steps=2, seed=3, image_size=IMAGE, decoding_t=2)
    reference = pipe.to("cuda")(rgba_object, **kw)
    pipe.to("cpu")
    pipe.enable_model_cpu_offload()
    try:
        offloaded = pipe(rgba_object, **kw)
        assert pipe.unet.device.type == "cpu"  # back on the CPU after the call
    finally:
        pipe.remove_all_hooks()
        pipe.to("cpu")
    torch.testing.assert_close(offloaded.latents, reference.latents, rtol=1e-4, atol=1e-4)
