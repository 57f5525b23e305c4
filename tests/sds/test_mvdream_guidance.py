"""MVDream guidance, prompt processor and system pieces on a tiny random checkpoint (CPU)."""
import contextlib
import math
import os
import shutil

import numpy as np
import pytest
import torch

from threestudio.models.guidance.mvdream_guidance import MVDreamMultiviewDiffusionGuidance
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.models.prompt_processors.mvdream_prompt_processor import MVDreamPromptProcessor
from threestudio.systems import mvdream_system
from threestudio.utils.config import ConfigError, load_config
from threestudio.utils.losses import orient_loss
from threestudio.utils.ops import orbit_c2w

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_VIEW = 4


IMAGE = 16  # renders are resized to this before the VAE (factor 2 in the tiny model): latents 8x8
LATENT = (8, 4, 8, 8)


def make_guidance(ckpt, **overrides):
    cfg = {"pretrained_model_name_or_path": str(ckpt), "image_size": IMAGE, "vae_latents": "mean",
           "min_step_percent": [0, 0.98, 0.02, 8000], "max_step_percent": [0, 0.98, 0.5, 8000]}
    cfg.update(overrides)
    return MVDreamMultiviewDiffusionGuidance(cfg)


@pytest.fixture(scope="module")
def guidance(mvdream_tiny_ckpt):
    return make_guidance(mvdream_tiny_ckpt)


@contextlib.contextmanager
def options(guidance, **values):
    """Switch config options of the shared guidance for one test (they are read at every call)."""
    old = {k: getattr(guidance.cfg, k) for k in values}
    try:
        for k, v in values.items():
            setattr(guidance.cfg, k, v)
        guidance.do_update_step(0, 0)
        yield guidance
    finally:
        for k, v in old.items():
            setattr(guidance.cfg, k, v)
        guidance.do_update_step(0, 0)


def two_objects(height=12, seed=0):
    """8 renders (2 objects x 4 views 90° apart) and their cameras, grouped object by object."""
    gen = torch.Generator().manual_seed(seed)
    azimuth = torch.tensor([10.0, 100.0, 190.0, 280.0, -40.0, 50.0, 140.0, 230.0])
    elevation = torch.tensor([15.0] * 4 + [30.0] * 4)
    distance = torch.tensor([2.0] * 4 + [3.5] * 4)
    c2w = orbit_c2w(elevation, azimuth, distance)
    rgb = torch.rand(8, height, height, 3, generator=gen)
    return rgb, c2w


def prompt_utils(width, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return PromptProcessorOutput(torch.randn(1, 77, width, generator=gen), torch.randn(1, 77, width, generator=gen))


def alphas_cumprod_by_hand():
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas))


def hand_eps(guidance, x_t, t, c2w, utils):
    """eps(prompt), eps(negative) from two separate UNet calls; cameras built here from the definition."""
    cam = c2w.clone()
    cam[:, :3, 3] = cam[:, :3, 3] / cam[:, :3, 3].norm(dim=-1, keepdim=True)
    cam = cam.reshape(len(c2w), 16)
    steps = torch.full((len(x_t),), t)
    outs = []
    for emb in (utils.text_embeddings, utils.uncond_text_embeddings):
        with torch.no_grad():
            outs.append(guidance.unet(x_t, steps, encoder_hidden_states=emb.expand(len(x_t), -1, -1),
                                      camera=cam, num_views=N_VIEW).sample)
    return outs


def hand_latents(guidance, rgb):
    images = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), (IMAGE, IMAGE), mode="bilinear",
                                             align_corners=False)
    return guidance.vae.encode(images * 2 - 1).latent_dist.mean * 0.18215


def assert_same_grad(a, b):
    assert b.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


def test_x0_sds_loss_and_gradient_match_the_formula(guidance):
    rgb, c2w = two_objects()
    utils = prompt_utils(guidance.unet.config.cross_attention_dim)
    t, scale = 500, 50.0
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))

    z = hand_latents(guidance, rgb)
    a = alphas_cumprod_by_hand()[t].float()
    x_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    eps_text, eps_neg = hand_eps(guidance, x_t, t, c2w, utils)
    eps_cfg = eps_neg + scale * (eps_text - eps_neg)
    x0 = (x_t - (1 - a).sqrt() * eps_cfg) / a.sqrt()
    x0_text = (x_t - (1 - a).sqrt() * eps_text) / a.sqrt()

    for r in (0.5, 0.0, 1.0):
        target = torch.empty_like(x0)
        for g in range(2):  # std over all values of each object's 4 views
            sl = slice(g * N_VIEW, (g + 1) * N_VIEW)
            factor = (x0_text[sl].std() + 1e-8) / (x0[sl].std() + 1e-8)
            target[sl] = r * x0[sl] * factor + (1 - r) * x0[sl]
        if r == 0:
            assert torch.equal(target, x0)
        rgb_a = rgb.clone().requires_grad_(True)
        with options(guidance, recon_std_rescale=r):
            out = guidance(rgb_a, utils, c2w, timestep=t, noise=noise)
        out["loss_sds"].backward()
        rgb_b = rgb.clone().requires_grad_(True)
        z = hand_latents(guidance, rgb_b)
        loss = 0.5 * ((z - target) ** 2).sum() / 8
        loss.backward()
        torch.testing.assert_close(out["loss_sds"], loss, rtol=1e-4, atol=0)
        torch.testing.assert_close(out["grad_norm"], ((z - target) / 8).norm().detach(), rtol=1e-4, atol=0)
        assert_same_grad(rgb_a.grad, rgb_b.grad)
        assert out["timestep"].item() == t


def test_classic_sds_loss_and_gradient_match_the_formula(guidance):
    rgb, c2w = two_objects(seed=5)
    rgb, c2w = rgb[:4], c2w[:4]  # one object
    utils = prompt_utils(guidance.unet.config.cross_attention_dim)
    t = 700
    noise = torch.randn(4, *LATENT[1:], generator=torch.Generator().manual_seed(4))
    z = hand_latents(guidance, rgb)
    a = alphas_cumprod_by_hand()[t].float()
    x_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    eps_text, eps_neg = hand_eps(guidance, x_t, t, c2w, utils)
    weights = {"sds": 1 - a, "uniform": torch.tensor(1.0), "fantasia3d": a.sqrt() * (1 - a)}
    for weighting, w in weights.items():
        rgb_a = rgb.clone().requires_grad_(True)
        with options(guidance, recon_loss=False, guidance_scale=7.5, weighting_strategy=weighting):
            out = guidance(rgb_a, utils, c2w, timestep=t, noise=noise)
        out["loss_sds"].backward()
        grad = w * (eps_neg + 7.5 * (eps_text - eps_neg) - noise)
        rgb_b = rgb.clone().requires_grad_(True)
        (hand_latents(guidance, rgb_b) * grad).sum().div(4).backward()  # d/dz = w (eps_cfg - noise) / B
        torch.testing.assert_close(out["loss_sds"], 0.5 * (grad ** 2).sum() / 4, rtol=1e-4, atol=0)
        torch.testing.assert_close(out["grad_norm"], grad.norm() / 4, rtol=1e-4, atol=0)
        assert_same_grad(rgb_a.grad, rgb_b.grad)

    # a (schedulable) clip bounds every element of the update
    with options(guidance, recon_loss=False, grad_clip=[0, 0.001, 0.01, 10]):
        guidance.do_update_step(0, 5)
        assert guidance.grad_clip_val == pytest.approx(0.0055)
        out = guidance(rgb, utils, c2w, timestep=t, noise=noise)
    clipped = (weights["sds"] * (eps_neg + 50 * (eps_text - eps_neg) - noise)).clamp(-0.0055, 0.0055)
    torch.testing.assert_close(out["loss_sds"], 0.5 * (clipped ** 2).sum() / 4, rtol=1e-4, atol=0)


def test_timestep_schedule_and_sampling(guidance):
    expected = {0: (980, 980), 4000: (500, 740), 8000: (20, 500), 12000: (20, 500)}
    for step, (lo, hi) in expected.items():
        guidance.do_update_step(0, step)
        assert abs(guidance.min_step - lo) <= 1 and abs(guidance.max_step - hi) <= 1, step
    guidance.do_update_step(0, 8000)
    torch.manual_seed(0)
    draws = [guidance.sample_timestep() for _ in range(2000)]
    assert min(draws) == guidance.min_step and max(draws) == guidance.max_step
    # one timestep per batch, drawn from the (per-step seeded) global RNG: same seed, same loss
    rgb, c2w = two_objects()
    utils = prompt_utils(guidance.unet.config.cross_attention_dim)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        results.append(guidance(rgb[:4], utils, c2w[:4]))
    assert results[0]["timestep"] == results[1]["timestep"]
    assert torch.equal(results[0]["loss_sds"], results[1]["loss_sds"])
    guidance.do_update_step(0, 0)
    with pytest.raises(ValueError, match="min_step_percent <= max_step_percent"):
        with options(guidance, min_step_percent=0.6, max_step_percent=0.5):
            pass
    assert guidance.min_step == 980


def test_guidance_is_frozen_fp32_on_cpu_and_checks_its_input(guidance):
    prior = [p for m in (guidance.unet, guidance.vae) for p in m.parameters()]
    assert prior and all(not p.requires_grad for p in prior)
    assert {p.dtype for p in prior} == {torch.float32}
    # the prior is held outside the module tree: nothing to train, nothing in state dicts
    assert list(guidance.parameters()) == [] and list(guidance.state_dict()) == []
    assert guidance.pipe.text_encoder is None  # the prompt processor's business
    # the schedule in float64, as the original checkpoint's buffers
    assert torch.equal(guidance.alphas_cumprod, alphas_cumprod_by_hand().float())
    guidance.train()
    assert not guidance.unet.training and not guidance.vae.training
    rgb, c2w = two_objects()
    utils = prompt_utils(guidance.unet.config.cross_attention_dim)
    with pytest.raises(ValueError, match="not a whole number of 4-view groups"):
        guidance(rgb[:6], utils, c2w[:6])
    with pytest.raises(ValueError, match="text embeddings have width 32"):
        guidance(rgb, prompt_utils(32), c2w)


def test_vae_posterior_sampling_uses_the_global_rng(guidance):
    rgb, _ = two_objects()
    mean = guidance.encode_images(rgb)
    with options(guidance, vae_latents="sample"):
        torch.manual_seed(7)
        a = guidance.encode_images(rgb)
        torch.manual_seed(7)
        b = guidance.encode_images(rgb)
    assert torch.equal(a, b)
    assert not torch.equal(a, mean)


def test_checkpoint_errors_come_when_the_prior_is_loaded(tmp_path):
    # building reads nothing (--test/--export never need the checkpoint); loading names the key
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path is not set"):
        MVDreamMultiviewDiffusionGuidance({}).load_prior()
    missing = MVDreamMultiviewDiffusionGuidance({"ckpt_path": str(tmp_path / "nowhere.pt")})
    assert not missing.prior.loaded
    with pytest.raises(FileNotFoundError, match="ckpt_path: '.*nowhere.pt' does not exist.*Nothing is downloaded"):
        missing.load_prior()
    with pytest.raises(ConfigError, match="weighting_strategy 'bogus'"):
        MVDreamMultiviewDiffusionGuidance({"weighting_strategy": "bogus"})


# ---------------------------------------------------------------------------------------- prompts
def test_prompt_embeddings_are_cached_and_reused(mvdream_tiny_ckpt, tmp_path, monkeypatch):
    from threestudio.models.guidance.mvdream_guidance import load_mvdream_pipeline
    from threestudio.models.prompt_processors import mvdream_prompt_processor as module

    ckpt = tmp_path / "copy.ckpt"
    shutil.copy(mvdream_tiny_ckpt, ckpt)
    cfg = {"pretrained_model_name_or_path": str(ckpt), "prompt": "a red car", "negative_prompt": "blurry",
           "cache_dir": str(tmp_path / "cache")}
    first = MVDreamPromptProcessor(cfg)
    assert (first.n_encoded, first.n_cache_hits) == (2, 0)
    assert len(os.listdir(tmp_path / "cache")) == 2
    pipe = load_mvdream_pipeline(str(ckpt), None, torch.float32)
    expected = pipe.encode_prompt(["a red car", "blurry"])
    utils = first()
    torch.testing.assert_close(utils.text_embeddings, expected[0:1])
    torch.testing.assert_close(utils.uncond_text_embeddings, expected[1:2])
    rows = utils.get_text_embeddings(8)
    assert rows.shape == (16, 77, expected.shape[-1])
    # [uncond; cond]: the negative prompt's rows first, as in the model packages
    assert torch.equal(rows[7], expected[1]) and torch.equal(rows[8], expected[0])

    # second run: everything from the cache, the text encoder is never loaded
    def no_loading(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although the embeddings are cached")

    monkeypatch.setattr(module, "load_mvdream_pipeline", no_loading)
    second = MVDreamPromptProcessor(cfg)
    assert (second.n_encoded, second.n_cache_hits) == (0, 2)
    assert torch.equal(second().text_embeddings, utils.text_embeddings)
    assert torch.equal(second().uncond_text_embeddings, utils.uncond_text_embeddings)

    # a new prompt misses (only it) and loads the text encoder alone; another model (here: the file
    # changed) or another encoder dtype misses too
    loaded = []

    def text_encoder_only(*args, **kwargs):
        loaded.append(tuple(kwargs["components"]))
        return load_mvdream_pipeline(*args, **kwargs)

    monkeypatch.setattr(module, "load_mvdream_pipeline", text_encoder_only)
    third = MVDreamPromptProcessor({**cfg, "prompt": "a blue car"})
    assert (third.n_encoded, third.n_cache_hits) == (1, 1)
    assert loaded == [("text_encoder",)]
    identity, path = third.model_identity(), third.cache_path("a red car")
    third.encode_dtype = torch.float16
    assert third.model_identity() != identity and third.cache_path("a red car") != path
    third.encode_dtype = torch.float32
    assert third.model_identity() == identity
    stat = os.stat(ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert third.model_identity() != identity and third.cache_path("a red car") != path


def test_prompt_processor_config_errors(mvdream_tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="prompt_processor.prompt"):
        MVDreamPromptProcessor({"pretrained_model_name_or_path": str(mvdream_tiny_ckpt)},
                               config_path="system.prompt_processor")
    with pytest.raises(ConfigError, match="prompt is empty"):
        MVDreamPromptProcessor({"pretrained_model_name_or_path": str(mvdream_tiny_ckpt), "prompt": " "})


# ---------------------------------------------------------------------------------------- system
TINY = [
    "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=12",
    "system.geometry.pos_encoding_config.per_level_scale=2.0",
    "system.geometry.mlp_network_config.n_neurons=16",
    "system.renderer.num_samples_per_ray=32",
    "system.guidance.image_size=16",
]


def tiny_config(name, ckpt, tmp_path, *extra):
    return load_config(os.path.join(REPO, "configs", name), cli_args=[
        "system.prompt_processor.prompt=a tiny cat", f"system.guidance.pretrained_model_name_or_path={ckpt}",
        f"system.prompt_processor.cache_dir={tmp_path / 'cache'}", f"exp_root_dir={tmp_path}", *TINY, *extra])


def test_sds_gradients_reach_the_geometry(mvdream_tiny_ckpt, tmp_path):
    from threestudio.data.random_multiview_camera import RandomMultiviewCameraDataModule

    cfg = tiny_config("mvdream-sd21-shading.yaml", mvdream_tiny_ckpt, tmp_path, "data.width=[12,24]",
                      "data.height=[12,24]", "system.background.random_aug=false")
    system = mvdream_system.MVDreamSystem(cfg.system)
    # loaded when training starts, never for --test/--export
    assert not system.guidance.prior.loaded and system.prompt_utils is None
    system.build_prior()
    assert system.guidance.prior.loaded
    batch = RandomMultiviewCameraDataModule(cfg.data)._make_train_dataset().batch_at(0)
    assert batch["rays_o"].shape == (8, 12, 12, 3)
    system.train()
    system.do_update_step(0, 0)  # fills the occupancy grid, as at the start of every training step
    torch.manual_seed(0)
    out = system(batch)
    loss = system.guidance(out["comp_rgb"], system.prompt_utils, **batch)["loss_sds"]
    loss = loss + orient_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"])
    loss.backward()
    for name in ("geometry.encoding", "geometry.density_network", "geometry.feature_network", "background"):
        grads = [p.grad for p in system.get_submodule(name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    # the prior is outside the module tree: never trained, never in checkpoints, never switched to train mode
    assert not any(k.startswith(("guidance.", "prompt_processor.")) for k in system.state_dict())
    assert not any(p is q for p in system.parameters() for q in system.guidance.unet.parameters())
    system.train()
    assert not system.guidance.unet.training and not system.guidance.vae.training
    assert not any(p.requires_grad for p in system.guidance.unet.parameters())
    system.release_prior()
    assert not system.guidance.prior.loaded and system.prompt_utils is None


def test_configs_follow_the_reference_recipe(mvdream_tiny_ckpt, tmp_path):
    main = tiny_config("mvdream-sd21.yaml", mvdream_tiny_ckpt, tmp_path)
    assert main.data["batch_size"] == [8, 4] and main.data["width"] == [64, 256]
    assert main.data["resolution_milestones"] == [5000] and main.trainer["max_steps"] == 10000
    guidance = main.system["guidance"]
    assert guidance["guidance_scale"] == 50.0 and guidance["recon_loss"] and guidance["recon_std_rescale"] == 0.5
    assert guidance["min_step_percent"] == [0, 0.98, 0.02, 8000]
    assert guidance["max_step_percent"] == [0, 0.98, 0.5, 8000]
    assert main.system["prompt_processor"]["pretrained_model_name_or_path"] == str(mvdream_tiny_ckpt)
    assert main.tag == "a_tiny_cat"
    shading = tiny_config("mvdream-sd21-shading.yaml", mvdream_tiny_ckpt, tmp_path)
    assert shading.system["material_type"] == "diffuse-with-point-light-material"
    assert shading.system["geometry"]["normal_type"] == "analytic"
    assert shading.system["loss"]["lambda_orient"] == [0, 10.0, 1000.0, 5000]
    assert shading.system["material"]["ambient_only_steps"] == 5000
    # the high-res phase config is the main config with the 256² x 4 phase only
    high = tiny_config("mvdream-sd21-highres.yaml", mvdream_tiny_ckpt, tmp_path)
    assert (high.data["batch_size"], high.data["width"], high.data["height"]) == (4, 256, 256)
    assert high.data.get("resolution_milestones", []) == []
    assert high.system == main.system and high.trainer == main.trainer and high.checkpoint == main.checkpoint
    same = {k: v for k, v in main.data.items() if k not in ("batch_size", "width", "height", "resolution_milestones")}
    assert {k: high.data[k] for k in same} == same
    # a missing prompt or checkpoint stops before any work
    with pytest.raises(ConfigError, match="prompt"):
        load_config(os.path.join(REPO, "configs", "mvdream-sd21.yaml"))


def test_unknown_loss_term_is_rejected(mvdream_tiny_ckpt, tmp_path):
    cfg = tiny_config("mvdream-sd21.yaml", mvdream_tiny_ckpt, tmp_path, "system.loss.lambda_rgb=1.0")
    with pytest.raises(ConfigError, match=r"unknown term\(s\) \['lambda_rgb'\]"):
        mvdream_system.MVDreamSystem(cfg.system)
    cfg = tiny_config("mvdream-sd21.yaml", mvdream_tiny_ckpt, tmp_path, "system.guidance.guidance_scal=3")
    with pytest.raises(ConfigError, match="system.guidance.guidance_scal"):
        mvdream_system.MVDreamSystem(cfg.system)
