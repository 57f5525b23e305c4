"""The seed's stage-1 spelling, mapped onto `python -m hi3d.run --stages 1`:

    python pipeline_i2v_eval_v01.py --denoise_checkpoint ckpts/first_stage.pt --image_path demo/3.png --output_dir outputs/3
"""

import sys

from hi3d.aliases import alias_main

if __name__ == "__main__":
    sys.exit(alias_main(1, __doc__))
