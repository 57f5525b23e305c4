"""Prompt processor base: text (and negative) prompt embeddings, computed once and cached on disk."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from threestudio.utils.base import BaseObject
from threestudio.utils.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class PromptProcessorOutput:
    """Embeddings of one prompt and its negative prompt, each (1, L, D)."""

    text_embeddings: Tensor
    uncond_text_embeddings: Tensor

    def get_text_embeddings(self, n_rows: int) -> Tensor:
        """(2 * n_rows, L, D): n_rows copies of the negative prompt, then n_rows of the prompt.

        Classifier-free guidance runs both halves in one batch, in the order the model packages (and
        diffusers) use everywhere: [uncond; cond]. Each half keeps the row order of the images, so a batch
        grouped object by object stays grouped."""
        cond = self.text_embeddings.expand(n_rows, -1, -1)
        uncond = self.uncond_text_embeddings.expand(n_rows, -1, -1)
        return torch.cat([uncond, cond], dim=0)


class PromptProcessor(BaseObject):
    """Encodes `prompt` and `negative_prompt` with a model's text encoder, caching each embedding on disk.

    A cache entry is keyed by `model_identity()` (which model's text encoder) and the prompt, so a second
    run with the same model and prompt loads the embedding and never builds the text encoder.
    Subclasses implement `model_identity()` and `encode(prompts)`.
    """

    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "???"
        negative_prompt: str = ""
        # where embeddings are cached (relative paths are relative to the working directory)
        cache_dir: str = ".threestudio_cache/text_embeddings"
        use_cache: bool = True

    cfg: Config

    def configure(self) -> None:
        self.prompt = self.cfg.prompt
        self.negative_prompt = self.cfg.negative_prompt
        if not self.prompt.strip():
            raise ConfigError("prompt_processor.prompt is empty; give the text to generate, e.g. prompt='a red car'.")
        # how many prompts this object encoded with the model and how many it read from the cache
        self.n_encoded = 0
        self.n_cache_hits = 0
        embeddings = self.get_embeddings([self.prompt, self.negative_prompt])
        self.text_embeddings = embeddings[0:1]
        self.uncond_text_embeddings = embeddings[1:2]

    # ------------------------------------------------------------------ to implement
    def model_identity(self) -> str:
        """A string that changes whenever the text encoder's weights may have changed."""
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> Tensor:
        """(len(prompts), L, D) float embeddings, on any device."""
        raise NotImplementedError

    # ------------------------------------------------------------------ caching
    def cache_path(self, prompt: str) -> str:
        key = hashlib.sha256(f"{self.model_identity()}\0{prompt}".encode("utf-8")).hexdigest()
        return os.path.join(self.cfg.cache_dir, f"{key}.safetensors")

    def _load_cached(self, prompt: str) -> Optional[Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = self.cache_path(prompt)
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:
                # the prompt is stored too: a hash collision or a hand-edited file is not silently used
                if (f.metadata() or {}).get("prompt") != prompt:
                    return None
                return f.get_tensor("embedding")
        except (SafetensorError, OSError, KeyError) as e:
            logger.warning("Ignoring unreadable cached text embedding %s (%s); encoding again.", path, e)
            return None

    def _store(self, prompt: str, embedding: Tensor) -> None:
        from safetensors.torch import save_file

        path = self.cache_path(prompt)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        save_file({"embedding": embedding.detach().float().cpu().contiguous()}, tmp,
                  metadata={"prompt": prompt, "model": self.model_identity()})
        os.replace(tmp, path)  # atomic: a concurrent run never reads half a file

    def get_embeddings(self, prompts: list[str]) -> Tensor:
        """(len(prompts), L, D) float32 CPU embeddings, from the cache where possible."""
        found: dict[str, Tensor] = {}
        if self.cfg.use_cache:
            for prompt in dict.fromkeys(prompts):
                cached = self._load_cached(prompt)
                if cached is not None:
                    found[prompt] = cached
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        self.n_cache_hits += len(found)
        if missing:
            encoded = self.encode(missing).detach().float().cpu()
            self.n_encoded += len(missing)
            for prompt, embedding in zip(missing, encoded):
                found[prompt] = embedding[None]
                if self.cfg.use_cache:
                    self._store(prompt, embedding[None])
        logger.info("Text embeddings: %d read from the cache, %d encoded.", len(prompts) - len(missing), len(missing))
        return torch.cat([found[p] for p in prompts], dim=0)

    def __call__(self) -> PromptProcessorOutput:
        return PromptProcessorOutput(self.text_embeddings, self.uncond_text_embeddings)
