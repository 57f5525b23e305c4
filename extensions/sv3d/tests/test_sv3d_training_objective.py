"""The EDM training objective, its weightings, noise augmentation and CFG dropout, against hand computations."""

import math

import pytest
import torch

from sv3d import SV3DPipeline
from sv3d.training import apply_cfg_dropout, cfg_keep_mask, edm_training_loss, get_recipe, loss_weight, sample_sigmas
from sv3d.training.recipes import FrozenEncoders


class LinearV(torch.nn.Module):
    """A 'UNet' whose v-prediction is a known function of its inputs: v = a * noisy_in + b * concat + c_noise."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.b = torch.nn.Parameter(torch.tensor(-0.25))

    def forward(self, sample, timestep, context, ids):
        out = self.a * sample[:, :, :4] + self.b * sample[:, :, 4:] + timestep.view(-1, 1, 1, 1, 1)

        class R:
            pass

        r = R()
        r.sample = out
        return r


@pytest.mark.parametrize("weighting", ["edm", "svd_mv_reference"])
def test_loss_equals_hand_computed_edm_formula(weighting):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 2, 2, generator=g)
    noise = torch.randn(2, 3, 4, 2, 2, generator=g)
    concat = torch.randn(2, 3, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.5, 2.0])
    loss = edm_training_loss(LinearV(), x0, sigma, noise, concat, torch.zeros(2, 1, 8), torch.zeros(2, 3, 2), weighting)
    expect = 0.0
    for i, s in enumerate([0.5, 2.0]):
        x = x0[i] + s * noise[i]
        c_in, c_skip, c_out, c_noise = 1 / math.sqrt(s * s + 1), 1 / (s * s + 1), -s / math.sqrt(s * s + 1), 0.25 * math.log(s)
        v = 0.5 * (c_in * x) - 0.25 * concat[i] + c_noise
        d = c_skip * x + c_out * v
        w = (s * s + 1) / (s * s) if weighting == "edm" else s * s + 1 / (s * s)
        expect += float(((d - x0[i]) ** 2).mean()) * w / 2
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-5)


def test_loss_weights_and_sigma_distribution():
    s = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(loss_weight(s, "edm"), torch.tensor([5.0, 2.0, 1.25]))
    assert torch.allclose(loss_weight(s, "svd_mv_reference"), torch.tensor([4.25, 2.0, 4.25]))
    with pytest.raises(ValueError, match="edm, svd_mv_reference"):
        loss_weight(s, "sgm")
    logs = sample_sigmas(20000, 1.0, 1.6, torch.Generator().manual_seed(1)).log()
    assert float(logs.mean()) == pytest.approx(1.0, abs=0.05) and float(logs.std()) == pytest.approx(1.6, abs=0.05)


def test_cfg_dropout_zeroes_exactly_concat_and_context():
    concat, context = torch.randn(4, 3, 4, 2, 2) + 3, torch.randn(4, 1, 8) + 3
    # per batch (the SVD-MV reference): one coin decides for every clip
    assert cfg_keep_mask(4, 0.2, "batch", torch.tensor([0.1])).tolist() == [0, 0, 0, 0]
    assert cfg_keep_mask(4, 0.2, "batch", torch.tensor([0.5])).tolist() == [1, 1, 1, 1]
    keep = cfg_keep_mask(4, 0.2, "sample", torch.tensor([0.1, 0.9, 0.19, 0.2]))
    assert keep.tolist() == [0, 1, 0, 1]
    c2, x2 = apply_cfg_dropout(concat, context, keep)
    for i, k in enumerate(keep.tolist()):
        assert torch.equal(c2[i], concat[i] if k else torch.zeros_like(concat[i]))
        assert torch.equal(x2[i], context[i] if k else torch.zeros_like(context[i]))
    with pytest.raises(ValueError, match="4 coins"):
        cfg_keep_mask(4, 0.2, "sample", torch.tensor([0.5]))
    # independent (Hi3D): the CLIP embedding and the latents of a clip are dropped by their own coins
    keep_ctx = cfg_keep_mask(4, 0.2, "independent", torch.tensor([0.1, 0.9, 0.9, 0.1]))
    keep_cat = cfg_keep_mask(4, 0.2, "independent", torch.tensor([0.9, 0.1, 0.9, 0.1]))
    c3, x3 = apply_cfg_dropout(concat, context, keep_cat, keep_context=keep_ctx)
    assert [bool(c3[i].any()) for i in range(4)] == [True, False, True, False]
    assert [bool(x3[i].any()) for i in range(4)] == [False, True, True, False]


def test_svd_mv_conditioning_noise_aug_in_pixel_space(tiny_svd_xt):
    pipe = SV3DPipeline.from_single_file(tiny_svd_xt)
    recipe = get_recipe("svd_mv")
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    batch = {"frames": frames, "elevation_deg": torch.tensor([[20.0] * 3, [5.0] * 3]), "azimuth_deg": torch.zeros(2, 3)}
    aug, aug_noise = torch.tensor([0.05, 0.2]), torch.randn(2, 3, 32, 32, generator=g)
    cond = recipe.conditioning(batch, FrozenEncoders(pipe.vae, pipe.image_encoder), aug, aug_noise)
    # condition latent: unscaled mode latent of the *noised* view 0, repeated over frames
    want = pipe.vae.encode(frames[:, 0] + aug.view(2, 1, 1, 1) * aug_noise).latent_dist.mode()
    assert torch.allclose(cond.concat, want[:, None].expand(-1, 3, -1, -1, -1), atol=1e-6)
    assert not torch.allclose(cond.concat[:, 0], pipe.vae.encode(frames[:, 0]).latent_dist.mode(), atol=1e-4)
    # CLIP embedding of the clean view 0; targets are scaled mode latents of all views
    assert torch.allclose(cond.context, pipe.encode_image(frames[:, 0]), atol=1e-6)
    assert torch.allclose(cond.latents, pipe.vae.encode(frames.flatten(0, 1)).latent_dist.mode().view(2, 3, 4, 4, 4) * 0.18215, atol=1e-6)
    # ids per frame [noise aug, elevation]
    assert cond.added_time_ids.shape == (2, 3, 2)
    assert torch.equal(cond.added_time_ids[:, :, 0], aug[:, None].expand(2, 3))
    assert torch.equal(cond.added_time_ids[:, :, 1], batch["elevation_deg"])


def test_sv3d_recipes_put_the_condition_view_last():
    p = get_recipe("sv3d_p")
    batch = {"elevation_deg": torch.tensor([[10.0, 10.0, 30.0, 10.0]]), "azimuth_deg": torch.tensor([[0.0, 90.0, 180.0, 270.0]])}
    ordered = {k: p.order_frames(v) for k, v in batch.items()}
    assert ordered["azimuth_deg"].tolist() == [[90.0, 180.0, 270.0, 0.0]]
    ids = p.added_time_ids(torch.tensor([1e-5]), ordered)
    assert ids.shape == (1, 4, 3)
    assert torch.allclose(ids[0, :, 1], torch.deg2rad(torch.tensor([80.0, 60.0, 80.0, 80.0])))
    assert torch.allclose(ids[0, :, 2], torch.deg2rad(torch.tensor([90.0, 180.0, 270.0, 0.0])))
    assert get_recipe("sv3d_u").added_time_ids(torch.tensor([0.5]), ordered).shape == (1, 4, 1)


@pytest.mark.parametrize("mode", ["layer", "block"])
def test_checkpointing_keeps_loss_and_gradients(tiny_pipes, mode):
    unet = tiny_pipes("sv3d_u").unet
    unet.train()
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 3, 4, 8, 8, generator=g), torch.tensor([1.3]), torch.randn(1, 3, 4, 8, 8, generator=g),
            torch.randn(1, 3, 4, 8, 8, generator=g), torch.randn(1, 1, 32, generator=g), torch.rand(1, 3, 1, generator=g))

    def grads():
        unet.zero_grad()
        loss = edm_training_loss(unet, *args, "edm")
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in unet.named_parameters()}

    try:
        ref_loss, ref = grads()
        if mode == "block":
            unet.enable_block_checkpointing()
        else:
            unet.enable_gradient_checkpointing()
        loss, got = grads()
    finally:
        unet.enable_block_checkpointing(False)
        unet.disable_gradient_checkpointing()
        unet.zero_grad()
        unet.eval()
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert all(torch.allclose(got[n], ref[n], atol=1e-6, rtol=1e-4) for n in ref)
