"""Fine-tune SVD-xt / SV3D into a multiview generator (EDM v-prediction, accelerate + DeepSpeed).

    accelerate launch -m sv3d.train --config train.yaml [key=value ...]
    accelerate launch --config_file extensions/sv3d/accelerate_config/deepspeed_zero_2.yaml -m sv3d.train --config ...
    python -m sv3d.train --config train.yaml data.root=/data/objs max_steps=100      # one process

Recipes: svd_mv, sv3d_u, sv3d_p (+ any registered in sv3d.training.recipes). Every config key is documented in
sv3d/training/config.py; `key=value` overrides any entry (unknown keys are an error).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sv3d.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="training YAML (keys of sv3d.training.config.TrainConfig)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=10 data.num_frames=21")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .training.config import ConfigError, load_config
    from .training.data_readers import DatasetError

    try:
        cfg = load_config(args.config, args.overrides)
        from .training.trainer import train

        result = train(cfg)
    except (ConfigError, DatasetError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.export:
        print(f"done: step {result.global_step}; single file {result.export['single_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
