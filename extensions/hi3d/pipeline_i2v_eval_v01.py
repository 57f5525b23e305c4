"""The seed's stage-1 spelling, mapped onto `python -m hi3d.run --stages 1`:

    python pipeline_i2v_eval_v01.py --denoise_checkpoint ckpts/first_stage.pt --image_path demo/3.png --output_dir outputs/3
"""

import argparse
import sys

from hi3d.aliases import run_alias

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--denoise_config", default=None, help="ignored: the model is described by the checkpoint")
    p.add_argument("--denoise_checkpoint", default="ckpts/first_stage.pt")
    p.add_argument("--image_path", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--elevation", type=int, default=0)
    a, rest = p.parse_known_args()
    sys.exit(run_alias(1, a.denoise_checkpoint, a.image_path, a.output_dir, a.elevation, rest))
