"""Recipe surgery (only the re-initialised tensor changes) and the generative-models single-file export."""

import torch
from safetensors.torch import load_file

from sv3d import SV3DPipeline
from sv3d.convert_unet import convert_video_unet_state_dict, video_unet_state_dict_from_diffusers
from sv3d.tiny import write_tiny_checkpoint
from sv3d.training import get_recipe
from sv3d.training.export import export_trained
from sv3d.training.models import load_source_models

UNET = "model.diffusion_model."


def _unet_sd(path):
    sd = load_file(path)
    return convert_video_unet_state_dict({k[len(UNET):]: v for k, v in sd.items() if k.startswith(UNET)})


def test_svd_mv_surgery_reinitialises_only_the_added_embedding_weight(tiny_svd_xt):
    src = _unet_sd(tiny_svd_xt)
    a = load_source_models(tiny_svd_xt, get_recipe("svd_mv"), seed=5)
    b = load_source_models(tiny_svd_xt, get_recipe("svd_mv"), seed=5)
    new = a.unet.state_dict()
    assert set(new) == set(src)
    differing = [k for k in new if new[k].shape != src[k].shape or not torch.equal(new[k], src[k])]
    assert differing == ["add_embedding.linear_1.weight"]
    w = new["add_embedding.linear_1.weight"]
    assert w.shape == (src[differing[0]].shape[0], 512)
    bound = 1 / 512**0.5  # nn.Linear's default init range
    assert float(w.abs().max()) <= bound and float(w.std()) > 0.5 * bound / 3**0.5
    assert torch.equal(w, b.unet.state_dict()["add_embedding.linear_1.weight"])  # same seed, same init on every rank
    assert a.unet.added_id_widths == [256, 256] and a.source_version == "svd_xt"


def test_sv3d_surgery_from_svd_keeps_cond_aug_columns(tiny_svd_xt, tmp_path):
    src = _unet_sd(tiny_svd_xt)["add_embedding.linear_1.weight"]
    u = load_source_models(tiny_svd_xt, get_recipe("sv3d_u")).unet.state_dict()["add_embedding.linear_1.weight"]
    assert torch.equal(u, src[:, 512:768])
    p = load_source_models(tiny_svd_xt, get_recipe("sv3d_p")).unet
    w = p.state_dict()["add_embedding.linear_1.weight"]
    assert p.added_id_widths == [256, 512, 512]
    assert torch.equal(w[:, :256], src[:, 512:768]) and torch.count_nonzero(w[:, 256:]) == 0
    sv3d_u = tmp_path / "sv3d_u.safetensors"
    write_tiny_checkpoint(str(sv3d_u), "sv3d_u", seed=3)
    same = load_source_models(str(sv3d_u), get_recipe("sv3d_u")).unet.state_dict()
    assert all(torch.equal(same[k], v) for k, v in _unet_sd(str(sv3d_u)).items())


def test_inverse_unet_conversion_round_trips(tiny_svd_xt):
    sd = load_file(tiny_svd_xt)
    sgm = {k[len(UNET):]: v for k, v in sd.items() if k.startswith(UNET)}
    back = video_unet_state_dict_from_diffusers(convert_video_unet_state_dict(sgm), list(sgm))
    assert set(back) == set(sgm) and all(back[k] is sgm[k] for k in sgm)


def test_exported_single_file_loads_and_samples(tiny_svd_xt, tmp_path, rgba_object):
    src = load_source_models(tiny_svd_xt, get_recipe("svd_mv"), seed=0)
    paths = export_trained(str(tmp_path / "exp"), src.unet, src.unet.state_dict(), src.vae, src.image_encoder,
                           src.source_unet_keys, tiny_svd_xt, "svd_xt", "svd_mv")
    pipe = SV3DPipeline.from_single_file(paths["single_file"])
    assert pipe.spec.version == "svd_mv" and pipe.spec.vector_keys == ["cond_aug", "elevation_deg"]
    assert pipe.load_report.unexpected == []
    loaded, trained = pipe.unet.state_dict(), src.unet.state_dict()
    assert set(loaded) == set(trained) and all(torch.equal(loaded[k], v) for k, v in trained.items())
    out = pipe(rgba_object, num_frames=3, num_steps=2, elevations_deg=20.0, image_size=32, decoding_t=3)
    assert out.frames.shape == (3, 3, 32, 32) and torch.isfinite(out.frames).all()
    assert out.azimuths_deg == [0.0, 120.0, 240.0]
    # the diffusers folder holds the same UNet
    from sv3d import SV3DUNet

    again = SV3DUNet.from_pretrained(paths["diffusers"] + "/unet").state_dict()
    assert all(torch.equal(again[k], v) for k, v in trained.items())


def test_freezing_spatial_or_temporal_layers(tiny_svd_xt):
    from sv3d.training.models import set_trainable

    unet = load_source_models(tiny_svd_xt, get_recipe("svd_mv")).unet
    set_trainable(unet, freeze_spatial=True, freeze_temporal=False)
    train = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert train and all(("temporal" in n or "time_pos_embed" in n or "time_mixer" in n) for n in train)
    set_trainable(unet, freeze_spatial=False, freeze_temporal=True)
    train2 = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert train2 and not (train2 & train) and len(train) + len(train2) == len(list(unet.parameters()))
