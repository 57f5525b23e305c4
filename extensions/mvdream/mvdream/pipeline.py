"""MVDreamPipeline: multiview UNet + KL autoencoder + CLIP text encoder + DDIM, loadable from the original checkpoint."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .camera import get_camera
from .checkpoint import check_mvdream_layout, read_state_dict
from .convert import COMPONENTS, ConvertedCheckpoint, convert_checkpoint
from .ldm_config import OriginalConfig, load_original_config
from .sampling import ddim_sample, make_scheduler
from .tokenizer import load_clip_tokenizer, tokenize
from .unet import MultiViewUNet2DConditionModel


@dataclass
class MVDreamPipelineOutput(BaseOutput):
    """images: (B*N) PIL images / array (B*N, H, W, 3) in [0, 1] / tensor (B*N, 3, H, W) in [0, 1] / latents."""

    images: Union[List[Any], np.ndarray, torch.Tensor]


def build_from_state(factory: Callable[[], torch.nn.Module], state: Dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """Build a model without random init (meta device) and adopt the converted tensors; strict: all must match."""
    with torch.device("meta"):
        model = factory()
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    for module_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if name != "position_ids":  # the only non-persistent buffer of these models
                    raise RuntimeError(f"buffer {module_name}.{name} was not initialised")
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    return model.eval()


class MVDreamPipeline(DiffusionPipeline):
    """Text-to-multiview sampling with MVDream; the UNet, VAE and text encoder are the guidance's building blocks.

    Batches are grouped object by object: rows k*N .. k*N+N-1 hold the N views of object k.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: MultiViewUNet2DConditionModel,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.conversion: Optional[ConvertedCheckpoint] = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_single_file(
        cls,
        path: Union[str, os.PathLike],
        original_config: OriginalConfig = None,
        require_camera: bool = True,
        torch_dtype: torch.dtype = torch.float32,
        components: Sequence[str] = COMPONENTS,
    ) -> "MVDreamPipeline":
        """Load an original checkpoint (`sd-v2.1-base-4view.pt`, `sd-v1.5-4view.pt`, or the same as .ckpt/.safetensors).

        original_config: the LDM YAML (path, dict, or a shipped name); None picks the shipped one matching the text
        tower. Sizes the YAML gives are replaced by the tensor shapes, so smaller models of the same layout load.
        Offline: nothing is downloaded. require_camera=False loads plain SD checkpoints (no camera MLP).
        components: the models to build, from ("unet", "vae", "text_encoder"); the others are None, and their
        tensors are neither read (the file is memory-mapped) nor converted. Tokenizer and scheduler are always built.
        """
        state = read_state_dict(path)
        check_mvdream_layout(state, source=f"'{path}'", require_camera=require_camera)
        config = load_original_config(original_config, state)
        converted = convert_checkpoint(state, config, components)
        del state
        pipe = cls.from_converted(converted, torch_dtype=torch_dtype)
        # Keep the configs and the account of unused tensors, not the tensors (they would outlive a .to()).
        pipe.conversion = dataclasses.replace(converted, unet_state={}, vae_state={}, text_state={})
        return pipe

    @classmethod
    def from_converted(cls, converted: ConvertedCheckpoint, torch_dtype: torch.dtype = torch.float32) -> "MVDreamPipeline":
        """Assemble the pipeline from `convert.convert_checkpoint` output (components it lacks are None)."""
        unet = vae = text_encoder = None
        if converted.unet_config is not None:
            unet = build_from_state(lambda: MultiViewUNet2DConditionModel(**converted.unet_config),
                                    converted.unet_state, torch_dtype)
        if converted.vae_config is not None:
            vae = build_from_state(lambda: AutoencoderKL(**converted.vae_config), converted.vae_state, torch_dtype)
        spec = converted.text_spec
        if spec is not None:
            text_encoder = cls._build_text_encoder(spec, converted.text_state, torch_dtype)
        tokenizer = load_clip_tokenizer(model_max_length=spec["max_length"] if spec is not None else 77)
        scheduler = make_scheduler(converted.schedule)
        return cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    @staticmethod
    def _build_text_encoder(spec: Dict[str, Any], text_state: Dict[str, torch.Tensor],
                            torch_dtype: torch.dtype) -> CLIPTextModel:
        text_config = CLIPTextConfig(
            vocab_size=spec["vocab_size"],
            hidden_size=spec["hidden_size"],
            intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["num_hidden_layers"],
            num_attention_heads=spec["num_attention_heads"],
            max_position_embeddings=spec["max_position_embeddings"],
            hidden_act=spec["hidden_act"],
            layer_norm_eps=1e-5,
            projection_dim=spec["hidden_size"],
            bos_token_id=49406,
            eos_token_id=49407,
            # The id prompts are padded with (OpenCLIP: 0; OpenAI CLIP: <|endoftext|>); encode_prompt reads it here.
            pad_token_id=0 if spec["pad_token"] == "!" else 49407,
        )
        with torch.device("meta"):
            flattened = not hasattr(CLIPTextModel(text_config), "text_model")
        if flattened:  # transformers >= 5.6 has no '.text_model' wrapper
            text_state = {k.removeprefix("text_model."): v for k, v in text_state.items()}
        return build_from_state(lambda: CLIPTextModel(text_config), text_state, torch_dtype)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs: Any) -> "MVDreamPipeline":
        """Load a folder written by `save_pretrained` (diffusers layout); local folders only, nothing is downloaded."""
        if not os.path.isdir(pretrained_model_name_or_path):
            raise FileNotFoundError(
                f"'{pretrained_model_name_or_path}' is not a folder written by MVDreamPipeline.save_pretrained(). "
                "For an original checkpoint file use MVDreamPipeline.from_single_file()."
            )
        kwargs.setdefault("low_cpu_mem_usage", False)
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ conditioning
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def tokenize(self, prompts: List[str]) -> torch.Tensor:
        """Token ids (B, 77) as the original text encoder sees them (BOS, text, EOS, pad id of the text tower)."""
        pad = self.text_encoder.config.pad_token_id
        pad = 49407 if pad is None else int(pad)
        return tokenize(self.tokenizer, list(prompts), self.tokenizer.model_max_length, pad)

    @torch.no_grad()
    def encode_prompt(self, prompts: Union[str, List[str]], device: Optional[torch.device] = None) -> torch.Tensor:
        """Text states (B, 77, D): penultimate layer + final layer norm for SD 2.x (OpenCLIP), last layer for SD 1.x."""
        if isinstance(prompts, str):
            prompts = [prompts]
        device = device or self.text_encoder.device
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        # No padding mask, only CLIP's causal mask, as in the original: pad tokens never affect earlier positions.
        states = self.text_encoder(input_ids=ids).last_hidden_state
        return states.to(device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1]."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_images(self, images: torch.Tensor, generator: Optional[torch.Generator] = None, sample: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled latents (posterior mean unless sample=True)."""
        posterior = self.vae.encode(images.to(self.vae.dtype) * 2.0 - 1.0).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return latents * self.vae.config.scaling_factor

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Union[str, List[str]] = "",
        num_views: int = 4,
        height: int = 256,
        width: int = 256,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        elevation: float = 15.0,
        azimuth_start: float = 90.0,
        azimuth_span: float = 360.0,
        camera: Optional[torch.Tensor] = None,
        use_camera: bool = True,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        output_type: str = "pil",
        callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
    ) -> MVDreamPipelineOutput:
        """Sample num_views views of each prompt's object.

        Cameras: `camera` (N, 16) or (B*N, 16) if given, else an orbit at `elevation` with azimuths from
        `azimuth_start` over `azimuth_span` in MVDream's convention (90 = first view from +x; see camera.py).
        Returns views grouped by object (B*N images). output_type: "pil", "np", "pt" or "latent".
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        batch = len(prompts) * num_views
        if use_camera and self.unet.camera_dim is not None:
            if camera is None:
                camera = get_camera(num_views, elevation, azimuth_start, azimuth_span)
            if camera.shape[0] == num_views:
                camera = camera.repeat(len(prompts), 1)
            if camera.shape != (batch, self.unet.camera_dim):
                raise ValueError(f"camera must be ({num_views}, {self.unet.camera_dim}) or ({batch}, ...), got {tuple(camera.shape)}")
        else:
            camera = None
        cond = self.encode_prompt(prompts).repeat_interleave(num_views, dim=0)
        uncond = self.encode_prompt(negatives).repeat_interleave(num_views, dim=0) if guidance_scale != 1.0 else None
        shape = (batch, self.unet.config.in_channels, height // factor, width // factor)
        latents = ddim_sample(
            self.unet, self.scheduler, cond, uncond, camera, num_views, shape,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
            generator=generator, callback=callback,
        )
        if output_type == "latent":
            return MVDreamPipelineOutput(images=latents)
        images = torch.cat([self.decode_latents(chunk) for chunk in latents.split(num_views)])
        if output_type == "pt":
            return MVDreamPipelineOutput(images=images.cpu())
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return MVDreamPipelineOutput(images=array)
        return MVDreamPipelineOutput(images=self.numpy_to_pil(array))
