"""`mvdream-multiview-diffusion-guidance`: score distillation (x0-SDS or classic SDS) with the frozen MVDream prior.

A thin adapter from rendered batches to the `mvdream` package (extensions/mvdream): renders of
objects x views -> VAE latents (gradient through the encoder) -> one noise level per batch -> the
multiview UNet with classifier-free guidance, conditioned on the batch's cameras -> a loss whose
gradient w.r.t. the latents is the score-distillation update.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.models.guidance.frozen_prior import FrozenPrior
from threestudio.utils.base import BaseModule
from threestudio.utils.config import ConfigError
from threestudio.utils.schedule import C, validate_schedule

if TYPE_CHECKING:
    from threestudio.models.prompt_processors.base import PromptProcessorOutput

logger = logging.getLogger(__name__)

WEIGHTINGS = ("sds", "uniform", "fantasia3d")
VAE_LATENTS = ("sample", "mean")
_CHECKPOINT_HINT = (
    "Give the MVDream checkpoint: sd-v2.1-base-4view.pt (huggingface.co/MVDream/MVDream), the same layout as "
    ".ckpt/.safetensors, or a folder written by MVDreamPipeline.save_pretrained(). Nothing is downloaded."
)


def resolve_mvdream_checkpoint(path: Optional[str], key: str) -> str:
    """The checkpoint path of config key `key`, checked to exist."""
    if not path:
        raise ConfigError(f"{key} is not set. {_CHECKPOINT_HINT}")
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{key}: '{path}' does not exist. {_CHECKPOINT_HINT}")
    return path


MVDREAM_COMPONENTS = ("unet", "vae", "text_encoder")


def load_mvdream_pipeline(path: str, original_config: Optional[str], dtype: torch.dtype,
                          components: Sequence[str] = MVDREAM_COMPONENTS) -> Any:
    """MVDreamPipeline from an original checkpoint file or a save_pretrained folder (offline), with only the
    models in `components` (the others are None; tokenizer and scheduler are always there)."""
    from mvdream import MVDreamPipeline  # heavy (diffusers, transformers): imported only when needed

    if os.path.isdir(path):
        # diffusers skips a component passed as None
        skipped = {name: None for name in MVDREAM_COMPONENTS if name not in components}
        return MVDreamPipeline.from_pretrained(path, torch_dtype=dtype, **skipped)
    return MVDreamPipeline.from_single_file(path, original_config=original_config, torch_dtype=dtype,
                                            components=components)


@threestudio.register("mvdream-multiview-diffusion-guidance")
class MVDreamMultiviewDiffusionGuidance(BaseModule):
    """Frozen MVDream UNet + VAE. `forward(rgb, prompt_utils, c2w)` -> {"loss_sds", "grad_norm", "timestep"}.

    The batch must be grouped object by object: rows k*n_view .. k*n_view+n_view-1 are the views of
    object k (what `random-multiview-camera-datamodule` gives). The prior (UNet and VAE only; the
    text encoder belongs to the prompt processor) sits in a `FrozenPrior`: loaded on first use (or
    `load_prior()`), outside the module tree. Weights are fp16 on CUDA (`half_precision_weights`), fp32 on CPU.
    """

    @dataclass
    class Config(BaseModule.Config):
        pretrained_model_name_or_path: Optional[str] = None
        # MVDream-threestudio's name for the same thing; used when pretrained_model_name_or_path is null
        ckpt_path: Optional[str] = None
        # the original LDM YAML: a path, a shipped name ("sd-v2.1-base-4view"), or null to pick the shipped one
        original_config: Optional[str] = None
        guidance_scale: float = 50.0
        # noise levels t ~ U[min, max] * num_train_timesteps, one per batch; schedulable
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        n_view: int = 4
        # renders are resized to image_size^2 before the VAE
        image_size: int = 256
        # x0-SDS (MVDream): regress the latents onto the denoised estimate; false: classic SDS
        recon_loss: bool = True
        # blend weight of the std-rescaled x0 (0 = plain CFG x0)
        recon_std_rescale: float = 0.5
        # classic SDS only: w(t) = 1 - alpha_bar ("sds"), 1 ("uniform"), sqrt(alpha_bar)(1 - alpha_bar) ("fantasia3d")
        weighting_strategy: str = "sds"
        # classic SDS only: clamp the per-element gradient to +-grad_clip (schedulable; null = off)
        grad_clip: Optional[Any] = None
        half_precision_weights: bool = True
        # "sample" draws from the VAE posterior (as the reference), "mean" takes its mean
        vae_latents: str = "sample"
        # recompute VAE encoder activations in backward: less memory, ~1/3 more encoder time
        gradient_checkpointing: bool = False

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.weighting_strategy not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting_strategy '{cfg.weighting_strategy}' is unknown; choose from {WEIGHTINGS}.")
        if cfg.vae_latents not in VAE_LATENTS:
            raise ConfigError(f"guidance.vae_latents '{cfg.vae_latents}' is unknown; choose from {VAE_LATENTS}.")
        if not 0.0 <= cfg.recon_std_rescale <= 1.0:
            raise ConfigError(f"guidance.recon_std_rescale must be in [0, 1], got {cfg.recon_std_rescale}.")
        if cfg.n_view < 1:
            raise ConfigError(f"guidance.n_view must be positive, got {cfg.n_view}.")
        for key in ("min_step_percent", "max_step_percent") + (("grad_clip",) if cfg.grad_clip is not None else ()):
            validate_schedule(getattr(cfg, key), f"system.guidance.{key}")
        self.weights_dtype = (
            torch.float16 if torch.cuda.is_available() and cfg.half_precision_weights else torch.float32)
        # nothing is read here: --test/--export never need the checkpoint, training loads it at fit start
        self.prior: FrozenPrior = FrozenPrior(self._load_prior, name="MVDream UNet + VAE")
        self._alphas_cumprod: Optional[Tensor] = None
        self.do_update_step(0, 0)

    def resolve_checkpoint(self) -> str:
        key = "system.guidance.pretrained_model_name_or_path"
        path = self.cfg.pretrained_model_name_or_path
        if path is None and self.cfg.ckpt_path is not None:
            key, path = "system.guidance.ckpt_path", self.cfg.ckpt_path
        return resolve_mvdream_checkpoint(path, key)

    def check_training_inputs(self) -> None:
        """The checkpoint exists (launch.py asks before a training run does any work; the prior loads lazily)."""
        if type(self).load_pipeline is MVDreamMultiviewDiffusionGuidance.load_pipeline:  # not a stand-in prior
            resolve_mvdream_checkpoint(self.cfg.pretrained_model_name_or_path, "system.guidance.pretrained_model_name_or_path")

    def load_pipeline(self) -> Any:
        """The MVDreamPipeline of the checkpoint with its UNet and VAE (no text encoder)."""
        path = self.resolve_checkpoint()
        logger.info("Loading MVDream from %s (%s)", path, self.weights_dtype)
        return load_mvdream_pipeline(path, self.cfg.original_config, self.weights_dtype, components=("unet", "vae"))

    def _load_prior(self, device: torch.device) -> Any:
        pipe = self.load_pipeline()
        if pipe.unet.camera_dim is None:
            raise ConfigError("system.guidance.pretrained_model_name_or_path: the checkpoint has no camera MLP: it is a plain Stable Diffusion model, not MVDream.")
        prediction = pipe.scheduler.config.prediction_type
        if prediction != "epsilon":
            raise ConfigError(f"system.guidance.pretrained_model_name_or_path: MVDream guidance expects an eps-prediction model; the checkpoint predicts '{prediction}'.")
        factor = pipe.vae_scale_factor
        if self.cfg.image_size % factor:
            raise ConfigError(f"guidance.image_size ({self.cfg.image_size}) must be a multiple of the VAE factor {factor}.")
        pipe.unet.to(device)
        pipe.vae.to(device)
        if self.cfg.gradient_checkpointing:
            pipe.vae.enable_gradient_checkpointing()
        return pipe

    def load_prior(self) -> None:
        """Load the prior now (systems call this when training starts, so errors come before any step)."""
        self.prior.get()

    @property
    def pipe(self) -> Any:
        return self.prior.get()

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> Tensor:
        if self._alphas_cumprod is None:
            self._alphas_cumprod = self.training_alphas_cumprod(self.pipe.scheduler.config)
        return self._alphas_cumprod

    @staticmethod
    def training_alphas_cumprod(config: Any) -> Tensor:
        """alpha_bar_t of the training schedule, computed in float64 like the original's buffers."""
        if config.beta_schedule != "scaled_linear":
            raise ConfigError(f"system.guidance.pretrained_model_name_or_path: MVDream's schedule is scaled_linear, the checkpoint's is '{config.beta_schedule}'.")
        n = int(config.num_train_timesteps)
        betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, n, dtype=torch.float64) ** 2
        return torch.cumprod(1.0 - betas, dim=0).float()

    # ------------------------------------------------------------------ schedule
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        lo = C(self.cfg.min_step_percent, epoch, global_step)
        hi = C(self.cfg.max_step_percent, epoch, global_step)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"guidance: need 0 <= min_step_percent <= max_step_percent <= 1 at step {global_step}, got {lo} and {hi}."
            )
        self._step_percent = (lo, hi)  # turned into timesteps when the prior (and its schedule) is loaded
        self.grad_clip_val = None if self.cfg.grad_clip is None else C(self.cfg.grad_clip, epoch, global_step)

    @property
    def min_step(self) -> int:
        return int(self.num_train_timesteps * self._step_percent[0])

    @property
    def max_step(self) -> int:
        return min(int(self.num_train_timesteps * self._step_percent[1]), self.num_train_timesteps - 1)

    # ------------------------------------------------------------------ pieces
    def encode_images(self, rgb: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] -> scaled latents (B, 4, s/f, s/f), float32, differentiable."""
        images = rgb.permute(0, 3, 1, 2)
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((images * 2.0 - 1.0).to(self.weights_dtype)).latent_dist
        latents = posterior.sample() if self.cfg.vae_latents == "sample" else posterior.mean
        return latents.float() * self.vae_scale

    def sample_timestep(self) -> int:
        """One noise level for the whole batch, drawn from the global (per-step seeded) CPU RNG."""
        return int(torch.randint(self.min_step, self.max_step + 1, (1,)).item())

    def camera_inputs(self, c2w: Tensor) -> Tensor:
        """(B, 4, 4) camera-to-world (z-up world, OpenGL axes) -> (B, 16) UNet camera inputs."""
        from mvdream import c2w_to_camera

        return c2w_to_camera(c2w.float())

    @torch.no_grad()
    def predict_noise(self, latents_noisy: Tensor, t: int, camera: Tensor, text_embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """(eps of the prompt, eps of the negative prompt) in one UNet call over both CFG halves."""
        n = latents_noisy.shape[0]
        sample = torch.cat([latents_noisy, latents_noisy]).to(self.weights_dtype)
        timesteps = torch.full((2 * n,), t, dtype=torch.long, device=latents_noisy.device)
        eps = self.unet(
            sample, timesteps,
            encoder_hidden_states=text_embeddings.to(device=latents_noisy.device, dtype=self.weights_dtype),
            camera=torch.cat([camera, camera]).to(device=latents_noisy.device, dtype=self.weights_dtype),
            num_views=self.cfg.n_view,
        ).sample.float()
        eps_uncond, eps_text = eps.chunk(2)  # [uncond; cond], as the text embeddings
        return eps_text, eps_uncond

    def rescaled_x0(self, x0: Tensor, x0_text: Tensor) -> Tensor:
        """Blend x0 with a copy whose std over each object's views matches the prompt-only x0's."""
        r = self.cfg.recon_std_rescale
        if r <= 0:
            return x0
        groups = (-1, self.cfg.n_view, *x0.shape[1:])
        std = x0.reshape(groups).std(dim=(1, 2, 3, 4), keepdim=True)
        std_text = x0_text.reshape(groups).std(dim=(1, 2, 3, 4), keepdim=True)
        adjusted = (x0.reshape(groups) * ((std_text + 1e-8) / (std + 1e-8))).reshape(x0.shape)
        return r * adjusted + (1.0 - r) * x0

    def weight(self, alpha_bar: Tensor) -> Tensor:
        if self.cfg.weighting_strategy == "sds":
            return 1.0 - alpha_bar
        if self.cfg.weighting_strategy == "uniform":
            return torch.ones_like(alpha_bar)
        return alpha_bar.sqrt() * (1.0 - alpha_bar)

    # ------------------------------------------------------------------ forward
    def forward(self, rgb: Tensor, prompt_utils: "PromptProcessorOutput", c2w: Tensor,
                timestep: Optional[int] = None, noise: Optional[Tensor] = None, **kwargs: Any) -> dict[str, Tensor]:
        """rgb (B, H, W, 3) in [0, 1], c2w (B, 4, 4); B a multiple of n_view. Other batch keys are ignored.

        `timestep` and `noise` (shaped like the latents) replace the random draws (for tests)."""
        batch = rgb.shape[0]
        if rgb.dim() != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"guidance: rgb must be (B, H, W, 3), got {tuple(rgb.shape)}.")
        if batch % self.cfg.n_view != 0:
            raise ValueError(
                f"guidance: batch of {batch} images is not a whole number of {self.cfg.n_view}-view groups; "
                "set data.batch_size to a multiple of data.n_view and data.n_view = guidance.n_view."
            )
        if c2w.shape != (batch, 4, 4):
            raise ValueError(f"guidance: c2w must be ({batch}, 4, 4), got {tuple(c2w.shape)}.")
        text_embeddings = prompt_utils.get_text_embeddings(batch)
        if text_embeddings.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(
                f"guidance: text embeddings have width {text_embeddings.shape[-1]} but the UNet expects "
                f"{self.unet.config.cross_attention_dim}; the prompt processor must use the same checkpoint."
            )

        latents = self.encode_images(rgb)
        t = self.sample_timestep() if timestep is None else int(timestep)
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"guidance: timestep {t} outside [0, {self.num_train_timesteps}).")
        if noise is None:
            # drawn on the CPU: the same seed gives the same noise on any device
            noise = torch.randn(latents.shape, dtype=torch.float32)
        noise = noise.to(device=latents.device, dtype=torch.float32)
        alpha_bar = self.alphas_cumprod[t].to(latents.device)
        camera = self.camera_inputs(c2w).to(latents.device)

        with torch.no_grad():
            latents_noisy = alpha_bar.sqrt() * latents.detach() + (1.0 - alpha_bar).sqrt() * noise
            eps_text, eps_uncond = self.predict_noise(latents_noisy, t, camera, text_embeddings)
            eps = eps_uncond + self.cfg.guidance_scale * (eps_text - eps_uncond)
            if self.cfg.recon_loss:
                # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
                x0 = (latents_noisy - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
                x0_text = (latents_noisy - (1.0 - alpha_bar).sqrt() * eps_text) / alpha_bar.sqrt()
                target = self.rescaled_x0(x0, x0_text)
            else:
                grad = self.weight(alpha_bar) * (eps - noise)
                if self.grad_clip_val is not None:
                    grad = grad.clamp(-self.grad_clip_val, self.grad_clip_val)
                target = latents.detach() - torch.nan_to_num(grad)
        # d loss / d latents = (latents - target) / B: x0-SDS regresses onto x0, classic SDS steps along grad
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / batch
        return {
            "loss_sds": loss,
            "grad_norm": ((latents.detach() - target) / batch).norm(),
            "timestep": torch.tensor(float(t)),
        }
