import os
import sys
from pathlib import Path

# Nothing may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

# The model packages of *this* checkout come first, ahead of any editable install
# made from another checkout (worktrees, a second clone).
_root = Path(__file__).resolve().parent
for _pkg in sorted((_root / "extensions").glob("*/pyproject.toml"), reverse=True):
    sys.path.insert(0, str(_pkg.parent))
