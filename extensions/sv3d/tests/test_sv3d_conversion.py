"""Loading original-layout checkpoints: version recognition, lossless conversion, clear errors."""

import pytest
import torch
from safetensors.torch import save_file

from sv3d import SV3DPipeline, detect_version
from sv3d.checkpoint import load_checkpoint
from sv3d.tiny import sgm_checkpoint_shapes, tiny_config, write_tiny_checkpoint


def _module_numel(m):
    return sum(t.numel() for k, t in m.state_dict().items() if not k.endswith("position_ids"))


IGNORED_PREFIXES = {
    "sv3d": ("conditioner.embedders.1.encoder.decoder.", "conditioner.embedders.1.encoder.post_quant_conv."),
    "svd": ("conditioner.embedders.3.encoder.decoder.", "conditioner.embedders.3.encoder.post_quant_conv.",
            "first_stage_model.encoder."),
}
CLIP_TEXT_REMNANTS = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "logit_scale")


@pytest.mark.parametrize("version", ["sv3d_u", "sv3d_p", "svd"])
def test_conversion_is_lossless(version, tiny_ckpts, tiny_pipes):
    sd = load_checkpoint(tiny_ckpts[version])
    pipe = tiny_pipes(version)
    rep = pipe.load_report
    assert rep.unexpected == []
    used = [k for keys in rep.used.values() for k in keys]
    assert len(used) == len(set(used)) and not set(used) & set(rep.ignored)
    assert set(used) | set(rep.ignored) == set(sd)
    # everything ignored is a documented group the original inference never reads
    family = "svd" if version.startswith("svd") else "sv3d"
    clip = "conditioner.embedders.0.open_clip.model."
    for k in rep.ignored:
        assert k.startswith(IGNORED_PREFIXES[family]) or (k.startswith(clip) and k[len(clip):].startswith(CLIP_TEXT_REMNANTS)), k
    # every parameter of every module came from the checkpoint, element for element
    for name, module in (("unet", pipe.unet), ("vae", pipe.vae), ("image_encoder", pipe.image_encoder)):
        assert _module_numel(module) == sum(sd[k].numel() for k in rep.used[name]), name
    u = "model.diffusion_model."
    assert torch.equal(pipe.unet.conv_in.weight, sd[u + "input_blocks.0.0.weight"])
    assert torch.equal(pipe.unet.add_embedding.linear_1.weight, sd[u + "label_emb.0.0.weight"])
    assert torch.equal(pipe.unet.down_blocks[0].attentions[0].temporal_transformer_blocks[0].ff_in.net[2].weight,
                       sd[u + "input_blocks.1.1.time_stack.0.ff_in.net.2.weight"])
    assert torch.equal(pipe.unet.up_blocks[1].upsamplers[0].conv.weight, sd[u + "output_blocks.5.2.conv.weight"])
    v = clip + "visual."
    layer = pipe.image_encoder.vision_model.encoder.layers[1].self_attn
    qkv = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(qkv, sd[v + "transformer.resblocks.1.attn.in_proj_weight"])
    assert torch.equal(pipe.image_encoder.visual_projection.weight, sd[v + "proj"].t())
    cond = "conditioner.embedders.%d.encoder." % (3 if family == "svd" else 1)
    assert torch.equal(pipe.vae.quant_conv.weight, sd[cond + "quant_conv.weight"])
    assert torch.equal(pipe.vae.encoder.conv_in.weight, sd[cond + "encoder.conv_in.weight"])
    assert torch.equal(pipe.vae.decoder.conv_in.weight, sd["first_stage_model.decoder.conv_in.weight"])
    if family == "svd":
        assert torch.equal(pipe.vae.decoder.time_conv_out.weight, sd["first_stage_model.decoder.conv_out.time_mix_conv.weight"])
    else:
        assert pipe.vae.post_quant_conv is None  # SV3D decodes without post_quant_conv


def test_image_decoder_variant_keeps_post_quant_conv(tmp_path):
    path = tmp_path / "svd_xt_image_decoder.safetensors"
    sd = write_tiny_checkpoint(str(path), "svd_image_decoder")
    pipe = SV3DPipeline.from_single_file(str(path))
    assert pipe.spec.version == "svd_xt_image_decoder"  # "xt" from the file name
    assert pipe.spec.num_frames == 25 and (pipe.spec.min_scale, pipe.spec.max_scale) == (1.5, 3.0)
    assert torch.equal(pipe.vae.post_quant_conv.weight, sd["first_stage_model.post_quant_conv.weight"])
    assert pipe.load_report.unexpected == []


@pytest.mark.parametrize("version,name,expected", [
    ("sv3d_u", "a.safetensors", "sv3d_u"), ("sv3d_p", "a.safetensors", "sv3d_p"),
    ("svd", "svd.safetensors", "svd"), ("svd", "svd_xt.safetensors", "svd_xt"),
    ("svd_image_decoder", "svd_image_decoder.safetensors", "svd_image_decoder"),
])
def test_detect_version_from_keys_and_shapes(version, name, expected):
    sd = {k: torch.empty(s) for k, s in sgm_checkpoint_shapes(version).items()}
    assert detect_version(sd, name) == expected


def test_pickled_checkpoint_loads_like_safetensors(tmp_path, tiny_pipes):
    path = tmp_path / "sv3d_u.ckpt"
    write_tiny_checkpoint(str(path), "sv3d_u", seed=1)  # same weights as the session's sv3d_u
    pipe = SV3DPipeline.from_single_file(str(path))
    ref = tiny_pipes("sv3d_u")
    for (k, a), (_, b) in zip(pipe.unet.state_dict().items(), ref.unet.state_dict().items()):
        assert torch.equal(a, b), k


def test_original_config_sets_head_size(tiny_ckpts):
    pipe = SV3DPipeline.from_single_file(tiny_ckpts["sv3d_u"], original_config=tiny_config("sv3d_u", head_channels=16))
    assert pipe.unet.config.num_attention_heads == (2, 4, 8, 8)
    default = SV3DPipeline.from_single_file(tiny_ckpts["sv3d_u"])
    assert default.unet.config.num_attention_heads == (1, 1, 2, 2)  # 64-wide heads, at least one


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SV3DPipeline.from_single_file(str(tmp_path / "nope.safetensors"))


def test_wrong_family_mvdream_layout(tmp_path):
    path = tmp_path / "sd-v2.1-base-4view.safetensors"
    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        "model.diffusion_model.camera_embed.0.weight": torch.zeros(8, 16),
        "cond_stage_model.model.positional_embedding": torch.zeros(77, 8),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
    }, str(path))
    with pytest.raises(ValueError, match="MVDream"):
        SV3DPipeline.from_single_file(str(path))


def test_wrong_family_sd_layout_and_unknown_width(tmp_path):
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="Stable Diffusion"):
        SV3DPipeline.from_single_file(str(path))
    sd = {k: torch.zeros(s) for k, s in sgm_checkpoint_shapes("sv3d_u").items()}
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(128, 384)
    with pytest.raises(ValueError, match="unknown vector-conditioning width 384"):
        detect_version(sd, "x.safetensors")
    # 512 wide with 8 input channels is SVD-MV; with other input channels (e.g. Hi3D stage 2, 17) it is not
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(128, 512)
    assert detect_version(sd, "x.safetensors") == "svd_mv"
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 17, 3, 3)
    with pytest.raises(ValueError, match="unknown vector-conditioning width 512"):
        detect_version(sd, "x.safetensors")


def test_config_of_other_family_is_refused(tiny_ckpts):
    with pytest.raises(ValueError, match="sv3d_u model but the config describes sv3d_p"):
        SV3DPipeline.from_single_file(tiny_ckpts["sv3d_u"], version="sv3d_p")


@pytest.mark.parametrize("version,keys,widths,first,guider", [
    ("sv3d_u", ["cond_aug"], [256], "decoder", ("triangle", 1.0, 2.5)),
    ("sv3d_p", ["cond_aug", "polars_rad", "azimuths_rad"], [256, 512, 512], "decoder", ("triangle", 1.0, 2.5)),
    ("svd", ["fps_id", "motion_bucket_id", "cond_aug"], [256, 256, 256], "temporal", ("linear", 1.0, 2.5)),
    ("svd_xt_image_decoder", ["fps_id", "motion_bucket_id", "cond_aug"], [256] * 3, "autoencoder_kl", ("linear", 1.5, 3.0)),
])
def test_shipped_configs(version, keys, widths, first, guider, tmp_path):
    from omegaconf import OmegaConf

    from sv3d.config import shipped_config_path, spec_from_config

    spec = spec_from_config(shipped_config_path(version))
    assert (spec.version, spec.vector_keys, spec.vector_widths, spec.first_stage) == (version, keys, widths, first)
    assert (spec.guider, spec.min_scale, spec.max_scale, spec.sigma_max) == (*guider, 700.0)
    # an original inference YAML has no sampler_config: the version's recipe is used
    cfg = OmegaConf.load(shipped_config_path(version))
    del cfg.model.params["sampler_config"]
    OmegaConf.save(cfg, tmp_path / f"{version}.yaml")
    again = spec_from_config(str(tmp_path / f"{version}.yaml"))
    assert (again.guider, again.min_scale, again.max_scale) == guider
