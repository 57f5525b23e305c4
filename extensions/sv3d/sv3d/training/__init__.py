"""EDM fine-tuning of the SVD family (SVD-MV, SV3D_u/p; Hi3D adds its recipes) on accelerate + DeepSpeed.

    accelerate launch -m sv3d.train --config train.yaml [key=value ...]
    python -m sv3d.train --config train.yaml [key=value ...]        # one process

Pieces: `config` (TrainConfig), `recipes` (what a run starts from and how it conditions), `loss` (EDM objective
and weightings), `conditioning` (noise augmentation, CFG dropout), `data_readers` / `dataset` (svd_meta.jsonl,
Hi3D folders, transforms.json orbits), `trainer` (the loop), `export` (diffusers folder + single file).
"""

from .conditioning import apply_cfg_dropout, cfg_keep_mask, noise_augment, sample_noise_aug
from .config import ConfigError, TrainConfig, load_config
from .data_readers import DatasetError, OrbitObject, OrbitRing, read_dataset
from .dataset import OrbitClipDataset, RankBatchSampler
from .loss import LOSS_WEIGHTINGS, edm_training_loss, loss_weight, sample_sigmas
from .recipes import Conditioning, FrozenEncoders, Recipe, get_recipe, recipe_names, register_recipe

__all__ = [
    "TrainConfig", "load_config", "ConfigError", "DatasetError", "OrbitObject", "OrbitRing", "read_dataset",
    "OrbitClipDataset", "RankBatchSampler", "LOSS_WEIGHTINGS", "edm_training_loss", "loss_weight", "sample_sigmas",
    "apply_cfg_dropout", "cfg_keep_mask", "noise_augment", "sample_noise_aug", "Recipe", "Conditioning",
    "FrozenEncoders", "get_recipe", "recipe_names", "register_recipe", "train",
]


def train(cfg):
    """Run a fine-tuning job (imports accelerate lazily)."""
    from .trainer import train as _train

    return _train(cfg)
