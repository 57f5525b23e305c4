"""The latent cache gives the same conditioning and the same training losses as encoding every step."""

import pytest
import torch

from sv3d import SV3DPipeline
from sv3d.latent_cache import main as cache_main
from sv3d.training import OrbitClipDataset, get_recipe, load_config, read_dataset
from sv3d.training.dataset import collate_clips
from sv3d.training.recipes import FrozenEncoders


@pytest.mark.slow
def test_cache_matches_online_encoding(tiny_svd_xt, dummy_orbits, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    args = [f"pretrained={tiny_svd_xt}", f"data.root={dummy_orbits}", "data.resolution=32", "data.num_frames=3"]
    assert cache_main(args + [f"data.latent_cache={cache}", "--device", "cpu", "--objects_per_shard", "1"]) == 0
    assert cache_main(args + [f"data.latent_cache={cache}", "--device", "cpu"]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
    objects = read_dataset(dummy_orbits)
    pipe = SV3DPipeline.from_single_file(tiny_svd_xt)
    enc = FrozenEncoders(pipe.vae, pipe.image_encoder)
    g = torch.Generator().manual_seed(0)
    aug, noise = torch.tensor([0.05, 0.1]), torch.randn(2, 3, 32, 32, generator=g)
    for name in ("svd_mv", "sv3d_p"):
        recipe = get_recipe(name)
        plain = collate_clips([OrbitClipDataset(objects, 3, 32, seed=1)[p] for p in (3, 4)])
        cached = collate_clips([OrbitClipDataset(objects, 3, 32, seed=1, latent_cache=cache)[p] for p in (3, 4)])
        assert cached["frames"].shape == (2, 1, 3, 32, 32) and cached["latents"].shape == (2, 3, 4, 4, 4)
        a = recipe.conditioning(plain, enc, aug, noise)
        b = recipe.conditioning(cached, enc, aug, noise)
        for x, y in ((a.latents, b.latents), (a.concat, b.concat), (a.context, b.context), (a.added_time_ids, b.added_time_ids)):
            assert torch.allclose(x, y, atol=1e-5)
    with pytest.raises(ValueError, match="resolution 32, data.resolution is 64"):
        OrbitClipDataset(objects, 3, 64, latent_cache=cache)
    # a training run from the cache logs the same losses
    from accelerate.state import AcceleratorState

    from sv3d.training.trainer import train

    runs = []
    for extra in ([], [f"data.latent_cache={cache}"]):
        AcceleratorState._reset_state(True)
        runs.append(train(load_config(None, args + extra + [f"output_dir={tmp_path / str(len(runs))}", "max_steps=1", "batch_size=2",
                                                             "gradient_checkpointing=false", "progress_bar=false", "tensorboard=false"])))
    assert runs[1].losses == pytest.approx(runs[0].losses, rel=1e-4)
