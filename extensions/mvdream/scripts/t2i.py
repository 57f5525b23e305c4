#!/usr/bin/env python
"""Alias of `python -m mvdream.t2i` with the upstream spelling: `python scripts/t2i.py --num_frames 4 ...`."""
import sys

from mvdream.t2i import main

if __name__ == "__main__":
    sys.exit(main())
