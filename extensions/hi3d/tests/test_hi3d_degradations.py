"""Real-ESRGAN second-order degradations of the stage-2 training clips."""

import math

import torch

from hi3d.training import DegradationOptions, anisotropic_kernel, degrade_clip, filter2d, random_kernel, sinc_kernel


def test_kernels_are_normalised_and_shaped():
    g = torch.Generator().manual_seed(0)
    o = DegradationOptions()
    for second in (False, True):
        for _ in range(20):
            k = random_kernel(g, o, second)
            assert k.shape == (21, 21)
            assert abs(float(k.sum()) - 1.0) < 1e-5
    iso = anisotropic_kernel(7, 1.5, 1.5, 0.0)
    torch.testing.assert_close(iso, iso.T)  # isotropic: symmetric
    r = torch.arange(7.0) - 3
    g1 = torch.exp(-r ** 2 / (2 * 1.5 ** 2))
    torch.testing.assert_close(iso, torch.outer(g1, g1) / torch.outer(g1, g1).sum())
    aniso = anisotropic_kernel(9, 3.0, 0.5, math.pi / 2)  # long axis rotated onto y
    assert aniso[:, 4].sum() > aniso[4, :].sum()
    s = sinc_kernel(11, math.pi / 2, pad_to=21)
    assert s.shape == (21, 21) and abs(float(s.sum()) - 1.0) < 1e-5 and s[0].abs().max() == 0


def test_filter2d_uses_one_kernel_per_frame():
    x = torch.rand(2, 3, 16, 16)
    pulse = torch.zeros(2, 5, 5)
    pulse[:, 2, 2] = 1
    torch.testing.assert_close(filter2d(x, pulse), x)
    box = pulse.clone()
    box[1] = 1 / 25
    y = filter2d(x, box)
    torch.testing.assert_close(y[0], x[0])
    assert (y[1] - x[1]).abs().max() > 0.05


def test_degrade_clip_keeps_frame0_and_background():
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    masks = torch.zeros(3, 64, 64)
    masks[:, 16:48, 16:48] = 1
    out = degrade_clip(frames, masks, torch.Generator().manual_seed(2))
    assert out.shape == frames.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[0], frames[0])  # the condition frame stays clean
    assert torch.all(out[1:, :, masks[0] == 0] == 1.0)  # background reset to white
    inside = (out[1:, :, 16:48, 16:48] - frames[1:, :, 16:48, 16:48]).abs().mean()
    assert inside > 0.05  # degraded
    again = degrade_clip(frames, masks, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)  # reproducible from the generator
    other = degrade_clip(frames, masks, torch.Generator().manual_seed(3))
    assert not torch.equal(out, other)
