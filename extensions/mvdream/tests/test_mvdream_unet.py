"""Multiview UNet behaviour: views of one object attend jointly, camera conditioning, plain SD at one view."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from mvdream import MultiViewAttnProcessor, get_camera
from mvdream.pipeline import build_from_state

N_VIEWS = 4


@pytest.fixture(scope="module")
def inputs(tiny_spec):
    gen = torch.Generator().manual_seed(1)
    batch = 2 * N_VIEWS  # two objects of four views
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=gen),
        "timestep": torch.tensor([700] * N_VIEWS + [300] * N_VIEWS),
        "encoder_hidden_states": torch.randn(batch, 77, tiny_spec.text_width, generator=gen),
        "camera": get_camera(N_VIEWS, 15, 90).repeat(2, 1),
    }


def _run(unet, **kw):
    with torch.no_grad():
        return unet(**kw).sample


def test_multiview_attention_mixes_views_of_one_object_only(tiny_pipe, inputs):
    base = _run(tiny_pipe.unet, **inputs, num_views=N_VIEWS)
    changed = dict(inputs, sample=inputs["sample"].clone())
    changed["sample"][1] += 1.0  # view 2 of object 0
    out = _run(tiny_pipe.unet, **changed, num_views=N_VIEWS)
    assert (out[0] - base[0]).abs().max() > 1e-3  # view 1 of the same object sees it
    assert torch.allclose(out[N_VIEWS:], base[N_VIEWS:], atol=1e-6)  # the other object does not
    single = _run(tiny_pipe.unet, **inputs, num_views=1)
    single_changed = _run(tiny_pipe.unet, **changed, num_views=1)
    assert torch.allclose(single_changed[0], single[0], atol=1e-6)  # per-view: no mixing
    assert (single[0] - base[0]).abs().max() > 1e-3


def test_one_view_without_camera_is_plain_stable_diffusion(tiny_pipe, inputs):
    config = {k: v for k, v in tiny_pipe.unet.config.items() if not k.startswith("_")}
    config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    weights = {k: v for k, v in tiny_pipe.unet.state_dict().items() if not k.startswith("class_embedding.")}
    plain = build_from_state(lambda: UNet2DConditionModel(**config), weights, torch.float32)  # strict load
    kw = {k: inputs[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    expected = _run(plain, **kw)
    assert torch.allclose(_run(tiny_pipe.unet, **kw, num_views=1), expected, atol=1e-5)


def test_camera_is_diffusers_projection_class_embedding(tiny_pipe, inputs):
    config = {k: v for k, v in tiny_pipe.unet.config.items() if not k.startswith("_")}
    reference = build_from_state(lambda: UNet2DConditionModel(**config), tiny_pipe.unet.state_dict(), torch.float32)
    kw = {k: inputs[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    expected = _run(reference, **kw, class_labels=inputs["camera"])
    assert torch.allclose(_run(tiny_pipe.unet, **kw, camera=inputs["camera"], num_views=1), expected, atol=1e-5)


def test_camera_changes_the_output(tiny_pipe, inputs):
    base = _run(tiny_pipe.unet, **inputs, num_views=N_VIEWS)
    rotated = dict(inputs, camera=get_camera(N_VIEWS, 30, 0).repeat(2, 1))
    assert (base - _run(tiny_pipe.unet, **rotated, num_views=N_VIEWS)).abs().max() > 1e-3
    no_camera = dict(inputs, camera=None)
    assert (base - _run(tiny_pipe.unet, **no_camera, num_views=N_VIEWS)).abs().max() > 1e-3


def test_multiview_processor_equals_joint_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    x = torch.randn(2 * 3, 5, 32)  # 2 objects x 3 views, 5 tokens each
    with torch.no_grad():
        out = MultiViewAttnProcessor()(attn, x, num_views=3)
        joint = x.reshape(2, 15, 32)
        q, k, v = (f(joint).reshape(2, 15, 2, 16).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, dim=-1)
        expected = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(2, 15, 32)).reshape(6, 5, 32)
    assert torch.allclose(out, expected, atol=1e-5)


def test_bad_call_arguments(tiny_pipe, inputs):
    with pytest.raises(ValueError, match=r"multiple of num_views=3"):
        _run(tiny_pipe.unet, **inputs, num_views=3)
    with pytest.raises(ValueError, match=r"camera must have shape \(8, 16\)"):
        _run(tiny_pipe.unet, **dict(inputs, camera=torch.zeros(8, 12)), num_views=N_VIEWS)
