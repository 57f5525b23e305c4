"""CLIP BPE tokenizer from the merges shipped in this package (no download, no cache)."""

from __future__ import annotations

import functools
import gzip
import html
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

MERGES_FILE = Path(__file__).resolve().parent / "tokenizer_data" / "clip_bpe_merges.txt.gz"
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> Tuple[Dict[str, int], Tuple[Tuple[str, str], ...]]:
    """CLIP's 49,408-entry vocabulary and its 48,894 merges.

    The vocabulary is not shipped: CLIP builds it from the merges (byte symbols, byte symbols + '</w>', one entry
    per merge in merge order, then the two special tokens), so it is rebuilt here the same way.
    """
    lines = gzip.decompress(MERGES_FILE.read_bytes()).decode("utf-8").splitlines()
    merges = tuple(tuple(line.split()) for line in lines if line and not line.startswith("#version"))
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(vocab_list)}, merges


def load_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIPTokenizer with CLIP's vocabulary; padding is applied by `tokenize` with the text tower's pad id.

    '!' (OpenCLIP's pad, id 0) is deliberately not registered as the pad *token*: transformers would then treat
    every '!' in a prompt as a special token and split '!!' differently from CLIP.
    """
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


def clean_prompt(text: str) -> str:
    """OpenCLIP's text cleaning without ftfy: undo HTML escapes, collapse whitespace, strip (lower-casing is BPE's)."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def tokenize(tokenizer: CLIPTokenizer, prompts: List[str], max_length: int, pad_token_id: int) -> torch.Tensor:
    """Token ids (len(prompts), max_length): BOS, text, EOS, then pad_token_id; long prompts keep EOS last."""
    encoded = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    )
    return encoded.input_ids.masked_fill(encoded.attention_mask == 0, pad_token_id)
