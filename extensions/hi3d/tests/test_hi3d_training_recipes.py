"""Hi3D stage-1/2 recipes on the shared fine-tuning loop `sv3d.training` (skipped where that loop is absent)."""

import os

import pytest
import torch

pytest.importorskip("sv3d.training", reason="the shared fine-tuning loop sv3d.training (issue 12) is not in this checkout")

from safetensors.torch import load_file  # noqa: E402

from hi3d import Hi3DPipeline  # noqa: E402
from hi3d.make_stage2_init import stage2_init_state_dict  # noqa: E402
from hi3d.testing import TINY_HEAD_CHANNELS, write_aux_files  # noqa: E402
from hi3d.training import frozen_aux  # noqa: E402
from sv3d.tiny import write_tiny_checkpoint  # noqa: E402


@pytest.fixture()
def env(tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState
    from sv3d.training.dummy_data import write_hi3d_dataset

    AcceleratorState._reset_state(True)
    aux = tmp_path / "ckpts"
    write_aux_files(str(aux), seed=1)
    monkeypatch.setenv("HI3D_CKPT_DIR", str(aux))
    frozen_aux.clear()
    src = tmp_path / "svd_xt_image_decoder.safetensors"
    write_tiny_checkpoint(str(src), "svd_xt_image_decoder", seed=2)
    data = tmp_path / "data"
    write_hi3d_dataset(str(data), num_objects=1, views_per_ring=4, size=96)
    yield {"src": str(src), "data": str(data), "aux": str(aux)}
    frozen_aux.clear()


def _train(env, recipe, out, resolution, extra=()):
    from sv3d.training import load_config
    from sv3d.training.trainer import train

    cfg = load_config(None, [f"recipe=hi3d.training.{recipe}", f"pretrained={env['src']}", f"data.root={env['data']}",
                             f"output_dir={out}", "data.format=hi3d", f"data.resolution={resolution}", "data.num_frames=4",
                             "data.hi3d_views_per_ring=4", "max_steps=1", "optim.warmup_steps=0", "optim.learning_rate=1e-3",
                             "gradient_checkpointing=false", "progress_bar=false", "tensorboard=false", "batch_size=1", *extra])
    return train(cfg)


@pytest.mark.slow
def test_stage1_recipe_trains_and_exports_a_loadable_stage1(env, tmp_path):
    from hi3d.training.recipe_stage1 import Hi3DStage1Recipe

    res = _train(env, "recipe_stage1:Hi3DStage1Recipe", tmp_path / "s1", 64)
    out, src = load_file(res.export["single_file"]), load_file(env["src"])
    assert not torch.equal(out["model.diffusion_model.label_emb.0.0.weight"], src["model.diffusion_model.label_emb.0.0.weight"])
    pipe = Hi3DPipeline.from_single_file(res.export["single_file"], ckpt_dir=env["aux"], num_head_channels=TINY_HEAD_CHANNELS)
    assert pipe.stage == "stage1" and pipe.unet.added_id_kinds[0] == "value+sinusoid@100"
    # the ids: [aesthetic of the middle view, integer elevation, noise aug], the same on every frame
    recipe = Hi3DStage1Recipe()
    batch = {"elevation_deg": torch.full((2, 4), 19.6), "aesthetic": torch.tensor([5.0, 6.0])}
    ids = recipe.added_time_ids(torch.tensor([0.1, 0.2]), batch)
    assert ids.shape == (2, 4, 3) and ids[1, 3].tolist() == pytest.approx([6.0, 20.0, 0.2])


@pytest.mark.slow
def test_stage2_recipe_surgery_matches_make_stage2_init_and_trains(env, tmp_path):
    from hi3d.training.recipe_stage2 import stage2_unet_from_svd
    from sv3d import SV3DPipeline

    src_pipe = SV3DPipeline.from_single_file(env["src"], version="svd_xt_image_decoder")
    unet = stage2_unet_from_svd(src_pipe.unet)
    ref = stage2_init_state_dict(load_file(env["src"]))
    torch.testing.assert_close(unet.conv_in.weight, ref["model.diffusion_model.input_blocks.0.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(unet.add_embedding.linear_1.weight, ref["model.diffusion_model.label_emb.0.0.weight"], rtol=0, atol=0)
    res = _train(env, "recipe_stage2:Hi3DStage2Recipe", tmp_path / "s2", 96)
    assert len(res.losses) == 1 and torch.isfinite(torch.tensor(res.losses)).all()
    pipe = Hi3DPipeline.from_single_file(res.export["single_file"], ckpt_dir=env["aux"], num_head_channels=TINY_HEAD_CHANNELS)
    assert pipe.stage == "stage2" and pipe.unet.config.in_channels == 17
