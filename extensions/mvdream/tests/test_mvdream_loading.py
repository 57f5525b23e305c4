"""from_single_file on tiny original-layout checkpoints: lossless conversion, sizes, formats, round trips."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
import torch
import yaml

from mvdream import MVDreamPipeline, MultiViewAttnProcessor, PerViewAttnProcessor
from mvdream.checkpoint import SCHEDULE_BUFFERS
from mvdream.ldm_config import SHIPPED_CONFIGS
from mvdream.testing import TINY_SD15, OriginalSpec, original_state_dict, write_checkpoint


def _fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().to(torch.float32).contiguous().flatten().numpy().tobytes()).hexdigest()


def _model_fingerprints(pipe: MVDreamPipeline) -> Counter:
    """Fingerprints of every loaded tensor; q/k/v of each text layer re-fused, as OpenCLIP stores them."""
    prints = Counter()
    for model in (pipe.unet, pipe.vae):
        prints.update(_fingerprint(t) for t in model.state_dict().values())
    text = pipe.text_encoder.state_dict()
    fused = {}
    for key, value in text.items():
        for proj in ("q_proj", "k_proj", "v_proj"):
            if f".self_attn.{proj}." in key:
                fused.setdefault(key.replace(f".{proj}.", ".in_proj."), {})[proj] = value
                break
        else:
            prints[_fingerprint(value)] += 1
    for parts in fused.values():
        prints[_fingerprint(torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]]))] += 1
    return prints


def test_conversion_is_lossless(tiny_pipe, tiny_state, tiny_spec):
    """Every checkpoint tensor lands in a model exactly once, except the ones unused by design; nothing is invented."""
    last_block = f"cond_stage_model.model.transformer.resblocks.{tiny_spec.text_layers - 1}."
    expected_unused = {k for k in tiny_state if k.startswith(last_block)}
    expected_unused |= {"cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale"}
    expected_unused |= set(SCHEDULE_BUFFERS)
    assert set(tiny_pipe.conversion.unused) == expected_unused

    source = Counter(_fingerprint(v) for k, v in tiny_state.items() if k not in expected_unused)
    assert _model_fingerprints(tiny_pipe) == source
    n_params = sum(v.numel() for k, v in tiny_state.items() if k not in expected_unused)
    loaded = sum(p.numel() for m in (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder) for p in m.parameters())
    assert loaded == n_params


def test_camera_mlp_lands_in_class_embedding(tiny_pipe, tiny_state):
    emb = tiny_pipe.unet.class_embedding
    assert torch.equal(emb.linear_1.weight, tiny_state["model.diffusion_model.camera_embed.0.weight"])
    assert torch.equal(emb.linear_2.bias, tiny_state["model.diffusion_model.camera_embed.2.bias"])


def test_sizes_come_from_yaml_and_tensor_shapes(tiny_pipe, tiny_spec):
    unet = tiny_pipe.unet.config
    assert list(unet.block_out_channels) == [64, 128, 128]
    assert list(unet.attention_head_dim) == [1, 2, 2]  # head width 64 from the shipped SD 2.1 YAML
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet.cross_attention_dim == tiny_spec.text_width and unet.use_linear_projection
    assert unet.class_embed_type == "projection" and unet.projection_class_embeddings_input_dim == 16
    assert list(tiny_pipe.vae.config.block_out_channels) == [32, 64]
    assert tiny_pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert tiny_pipe.vae_scale_factor == 2
    text = tiny_pipe.text_encoder.config
    assert text.num_hidden_layers == tiny_spec.text_layers - 1  # penultimate layer
    assert text.hidden_act == "gelu" and text.pad_token_id == 0
    assert tiny_pipe.tokenizer.model_max_length == 77


def test_attention_processors_installed(tiny_pipe):
    procs = tiny_pipe.unet.attn_processors
    attn1 = [p for name, p in procs.items() if "attn1" in name]
    others = [p for name, p in procs.items() if "attn1" not in name]
    assert attn1 and all(isinstance(p, MultiViewAttnProcessor) for p in attn1)
    assert others and all(type(p) is PerViewAttnProcessor for p in others)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_other_file_formats_load_the_same(tmp_path, tiny_state, tiny_pipe, suffix):
    path = write_checkpoint(tiny_state, tmp_path / f"tiny{suffix}")
    pipe = MVDreamPipeline.from_single_file(path)
    for a, b in ((pipe.unet, tiny_pipe.unet), (pipe.vae, tiny_pipe.vae), (pipe.text_encoder, tiny_pipe.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_explicit_original_config_path_and_dict(tiny_ckpt, tiny_pipe):
    path = SHIPPED_CONFIGS["sd-v2.1-base-4view"]
    by_path = MVDreamPipeline.from_single_file(tiny_ckpt, original_config=str(path))
    with open(path) as handle:
        as_dict = yaml.safe_load(handle)
    as_dict["model"]["params"]["unet_config"]["params"]["num_head_channels"] = 32
    by_dict = MVDreamPipeline.from_single_file(tiny_ckpt, original_config=as_dict)
    assert by_path.unet.config.attention_head_dim == tiny_pipe.unet.config.attention_head_dim
    assert list(by_dict.unet.config.attention_head_dim) == [2, 4, 4]


def test_sd15_layout_with_transformers_clip_text(tmp_path):
    state = original_state_dict(TINY_SD15, seed=3)
    pipe = MVDreamPipeline.from_single_file(write_checkpoint(state, tmp_path / "tiny-sd15.pt"))
    assert not pipe.unet.config.use_linear_projection
    assert list(pipe.unet.config.attention_head_dim) == [8, 8, 8]  # num_heads: 8 in the SD 1.5 YAML
    text = pipe.text_encoder.config
    assert text.num_hidden_layers == TINY_SD15.text_layers and text.hidden_act == "quick_gelu"
    assert text.pad_token_id == 49407
    unused = set(pipe.conversion.unused)
    assert unused == {"cond_stage_model.transformer.text_model.embeddings.position_ids"} | set(SCHEDULE_BUFFERS)
    ids = pipe.tokenize(["a dog"])
    assert ids[0, :4].tolist() == [49406, 320, 1929, 49407] and ids[0, 4:].eq(49407).all()
    hidden = pipe.encode_prompt(["a dog"])
    assert hidden.shape == (1, 77, TINY_SD15.text_width)


def test_plain_sd_checkpoint_without_camera(tmp_path):
    spec = OriginalSpec(camera_dim=None)
    path = write_checkpoint(original_state_dict(spec, seed=4), tmp_path / "plain-sd.safetensors")
    pipe = MVDreamPipeline.from_single_file(path, require_camera=False)
    assert pipe.unet.camera_dim is None and pipe.unet.class_embedding is None
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = pipe.unet(x, 500, encoder_hidden_states=torch.randn(2, 77, spec.text_width)).sample
    assert out.shape == x.shape


def test_save_pretrained_round_trip(tmp_path, tiny_pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_pipe.save_pretrained(tmp_path / "diffusers")
    loaded = MVDreamPipeline.from_pretrained(tmp_path / "diffusers")
    assert type(loaded.unet).__name__ == "MultiViewUNet2DConditionModel"
    assert all(isinstance(p, MultiViewAttnProcessor) for n, p in loaded.unet.attn_processors.items() if "attn1" in n)
    prompts = ["a red chair!!", ""]
    assert torch.equal(loaded.tokenize(prompts), tiny_pipe.tokenize(prompts))
    assert torch.equal(loaded.encode_prompt(prompts), tiny_pipe.encode_prompt(prompts))
    x, cam = torch.randn(4, 4, 8, 8), torch.randn(4, 16)
    ctx = torch.randn(4, 77, 64)
    with torch.no_grad():
        a = loaded.unet(x, 300, encoder_hidden_states=ctx, camera=cam, num_views=4).sample
        b = tiny_pipe.unet(x, 300, encoder_hidden_states=ctx, camera=cam, num_views=4).sample
    assert torch.equal(a, b)
    assert loaded.scheduler.config.steps_offset == 1


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_only_the_requested_components_are_read_and_built(tmp_path, tiny_state, tiny_pipe, suffix, monkeypatch):
    from mvdream import checkpoint as ckpt_module

    path = write_checkpoint(tiny_state, tmp_path / f"tiny{suffix}")
    read = []
    if suffix == ".safetensors":
        original = ckpt_module.LazySafetensors.__getitem__

        def spy(self, key):
            read.append(key)
            return original(self, key)

        monkeypatch.setattr(ckpt_module.LazySafetensors, "__getitem__", spy)
    text_only = MVDreamPipeline.from_single_file(path, components=("text_encoder",))
    assert text_only.unet is None and text_only.vae is None and text_only.text_encoder is not None
    prompts = ["a cat", ""]
    torch.testing.assert_close(text_only.encode_prompt(prompts), tiny_pipe.encode_prompt(prompts), rtol=0, atol=0)
    if suffix == ".safetensors":  # the UNet's and the VAE's bytes were never read
        assert read and not any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in read)
        assert any(k.startswith("cond_stage_model.") for k in read)
    prior = MVDreamPipeline.from_single_file(path, components=("unet", "vae"))
    assert prior.text_encoder is None
    for name in ("unet", "vae"):
        for (key, a), b in zip(getattr(prior, name).state_dict().items(), getattr(tiny_pipe, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    with pytest.raises(ValueError, match="unknown component"):
        MVDreamPipeline.from_single_file(path, components=("unet", "text"))
