"""The per-frame vector conditioning of SV3DUNet and its sinusoids."""

import inspect
import math

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from sv3d import SV3DUNet, embed_added_ids, sv3d_p_camera_ids, timestep_embedding


def test_sinusoid_is_cos_first():
    t = torch.tensor([0.0, 1.5, -3.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    args = t[:, None] * freqs[None]
    assert torch.allclose(emb, torch.cat([torch.cos(args), torch.sin(args)], dim=1), atol=1e-6)
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))


def test_added_ids_use_one_width_per_id():
    ids = torch.tensor([[0.1, 1.2, 2.3], [0.4, 0.5, 0.6]])
    emb = embed_added_ids(ids, [256, 512, 512])
    assert emb.shape == (2, 1280)
    assert torch.allclose(emb[:, 256:768], timestep_embedding(ids[:, 1], 512), atol=1e-6)
    assert torch.allclose(emb[:, 768:], timestep_embedding(ids[:, 2], 512), atol=1e-6)
    with pytest.raises(ValueError, match="expected 3 added time ids"):
        embed_added_ids(ids[:, :2], [256, 512, 512])


def _inputs(pipe, T=4, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, T, 8, hw, hw, generator=g)
    ctx = torch.randn(1, 1, pipe.unet.config.cross_attention_dim, generator=g)
    cams = sv3d_p_camera_ids([5.0, 10.0, 15.0, 20.0][:T], [90.0, 180.0, 270.0, 0.0][:T], T)
    ids = torch.cat([torch.full((T, 1), 1e-5), cams], dim=1)[None]
    return sample, ctx, ids


@torch.no_grad()
def test_changing_one_frames_camera_changes_only_that_frames_embedding(tiny_pipes):
    pipe = tiny_pipes("sv3d_p")
    _, _, ids = _inputs(pipe)
    ids2 = ids.clone()
    ids2[0, 2, 2] += 0.7  # azimuth of frame 2
    e1 = pipe.unet.embed_added_time_ids(ids, 1, 4)
    e2 = pipe.unet.embed_added_time_ids(ids2, 1, 4)
    changed = (e1 - e2).abs().amax(dim=-1)[0]
    assert changed[2] > 1e-3
    assert torch.equal(e1[0, [0, 1, 3]], e2[0, [0, 1, 3]])


@torch.no_grad()
def test_per_frame_camera_reaches_each_frames_output_independently(tiny_pipes):
    pipe = tiny_pipes("sv3d_p")
    sample, ctx, ids = _inputs(pipe)
    ids2 = ids.clone()
    ids2[0, 1, 1] += 0.5  # polar angle of frame 1
    t = torch.tensor([0.3])
    # with the temporal layers mixed in, frames talk to each other: every frame moves
    a = pipe.unet(sample, t, ctx, ids).sample
    b = pipe.unet(sample, t, ctx, ids2).sample
    assert (a - b).abs().amax(dim=(2, 3, 4))[0].min() > 0
    # with the learned mixers all-spatial (sigmoid(+50) == 1), each frame only sees its own camera
    mixers = [m for n, m in pipe.unet.named_parameters() if n.endswith("mix_factor")]
    saved = [m.detach().clone() for m in mixers]
    try:
        for m in mixers:
            m.fill_(50.0)
        a = pipe.unet(sample, t, ctx, ids).sample
        b = pipe.unet(sample, t, ctx, ids2).sample
    finally:
        for m, s in zip(mixers, saved):
            m.copy_(s)
    diff = (a - b).abs().amax(dim=(2, 3, 4))[0]
    assert diff[1] > 1e-4
    assert torch.equal(a[0, [0, 2, 3]], b[0, [0, 2, 3]])


@torch.no_grad()
def test_per_video_ids_broadcast_over_frames(tiny_pipes):
    pipe = tiny_pipes("svd")
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 3, 8, 8, 8, generator=g)
    ctx = torch.randn(2, 1, pipe.unet.config.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02], [10.0, 30.0, 0.1]])
    a = pipe.unet(sample, torch.tensor([0.1, 0.2]), ctx, ids).sample
    b = pipe.unet(sample, torch.tensor([0.1, 0.2]), ctx, ids[:, None].expand(2, 3, 3)).sample
    assert a.shape == (2, 3, 4, 8, 8)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="added_time_ids must be"):
        pipe.unet(sample, torch.tensor([0.1, 0.2]), ctx, ids[:1])


@torch.no_grad()
def test_matches_diffusers_model_for_per_video_ids(tiny_pipes):
    """Same weights, uniform widths, one id vector per video: our forward equals diffusers' own."""
    unet = tiny_pipes("svd").unet
    names = inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters
    ref = UNetSpatioTemporalConditionModel(**{k: v for k, v in unet.config.items() if k in names})
    ref.load_state_dict(unet.state_dict())
    for m in ref.modules():  # the one deliberate difference: generative-models' GroupNorm eps in all resnets
        if type(m).__name__ == "SpatioTemporalResBlock":
            for s in m.modules():
                if isinstance(s, torch.nn.GroupNorm):
                    s.eps = 1e-5
    g = torch.Generator().manual_seed(4)
    sample = torch.randn(1, 3, 8, 8, 8, generator=g)
    ctx = torch.randn(1, 1, unet.config.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    ours = unet(sample, torch.tensor([0.25]), ctx, ids).sample
    theirs = ref(sample, torch.tensor([0.25]), ctx, ids).sample
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_width_mismatch_is_refused():
    with pytest.raises(ValueError, match="sum to 1024"):
        SV3DUNet(block_out_channels=(32, 32, 32, 32), num_attention_heads=1, cross_attention_dim=8,
                 projection_class_embeddings_input_dim=1280, addition_time_embed_dims=(256, 256, 512))
