"""The seed's stage-2 spelling, mapped onto `python -m hi3d.run --stages 2` (reads stage 1 from the same --output_dir):

    python pipeline_i2v_eval_v02.py --denoise_checkpoint ckpts/second_stage.pt --image_path demo/3.png --output_dir outputs/3
"""

import sys

from hi3d.aliases import alias_main

if __name__ == "__main__":
    sys.exit(alias_main(2, __doc__))
