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
from threestudio.utils.misc import cleanup

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
        super().configure()

    def model_identity(self) -> str:
        # path, size and modification time identify the weights without reading gigabytes
        stat = os.stat(self.checkpoint)
        return (f"mvdream-text|{os.path.realpath(self.checkpoint)}|{stat.st_size}|{stat.st_mtime_ns}"
                f"|{self.cfg.original_config}")

    def encode(self, prompts: list[str]) -> Tensor:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        logger.info("Encoding %d prompt(s) with the text encoder of %s", len(prompts), self.checkpoint)
        pipe = load_mvdream_pipeline(self.checkpoint, self.cfg.original_config, dtype)
        text_encoder = pipe.text_encoder.to(device)
        try:
            with torch.no_grad():
                return pipe.encode_prompt(prompts, device=torch.device("cpu")).float()
        finally:
            del pipe, text_encoder
            cleanup()
