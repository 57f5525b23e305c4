"""`mvdream-prompt-processor`: prompt embeddings from the MVDream checkpoint's own text encoder, cached on disk."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import threestudio
from threestudio.models.guidance.mvdream_guidance import load_mvdream_pipeline, resolve_mvdream_checkpoint
from threestudio.models.prompt_processors.base import PromptProcessor
from threestudio.utils.misc import cleanup, get_device

logger = logging.getLogger(__name__)


@threestudio.register("mvdream-prompt-processor")
class MVDreamPromptProcessor(PromptProcessor):
    """Penultimate-layer OpenCLIP states (SD 2.1) of the prompt and the negative prompt, (1, 77, 1024) each.

    MVDream conditions every view on the same text (no view-dependent prompting). The text encoder is
    only loaded on a cache miss, and freed right after.
    """

    @dataclass
    class Config(PromptProcessor.Config):
        # the same checkpoint as the guidance (configs interpolate system.guidance's value)
        pretrained_model_name_or_path: Optional[str] = None
        original_config: Optional[str] = None

    cfg: Config

    def configure(self) -> None:
        self.checkpoint = resolve_mvdream_checkpoint(
            self.cfg.pretrained_model_name_or_path, "system.prompt_processor.pretrained_model_name_or_path")
        self.encode_device = get_device()
        self.encode_dtype = torch.float16 if self.encode_device.type == "cuda" else torch.float32
        super().configure()

    def model_identity(self) -> str:
        # path, size and modification time identify the weights without reading gigabytes; the dtype the
        # encoder runs in changes the embeddings too (fp16 on CUDA, fp32 on CPU)
        stat = os.stat(self.checkpoint)
        return (f"mvdream-text|{os.path.realpath(self.checkpoint)}|{stat.st_size}|{stat.st_mtime_ns}"
                f"|{self.cfg.original_config}|{self.encode_dtype}")

    def encode(self, prompts: list[str]) -> Tensor:
        logger.info("Encoding %d prompt(s) with the text encoder of %s", len(prompts), self.checkpoint)
        # the text encoder alone: the UNet's and VAE's tensors are neither read nor converted here
        pipe = load_mvdream_pipeline(self.checkpoint, self.cfg.original_config, self.encode_dtype,
                                     components=("text_encoder",))
        text_encoder = pipe.text_encoder.to(self.encode_device)
        try:
            with torch.no_grad():
                return pipe.encode_prompt(prompts, device=torch.device("cpu")).float()
        finally:
            del pipe, text_encoder
            cleanup()
