"""The web app's recipes: one row per pipeline (config, what it needs from the user, how that becomes `key=value`
overrides of `launch.py`). To add a pipeline, append a `Recipe` to `RECIPES`; `available` hides it until its
package or config exists.

User uploads are copied into a staging folder per job (`<outputs>/.app_uploads/<job>/`); nothing the user gave is
modified in place.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".gif", ".avi", ".mkv")


class RecipeInputError(ValueError):
    """What the user gave cannot run this recipe (said before anything starts)."""


@dataclass
class JobInputs:
    """Everything the page collects for one job."""
    files: list[str] = field(default_factory=list)  # uploaded views + transforms, an orbit video, or a zip
    prompt: str = ""
    image: Optional[str] = None  # the SV3D input (RGBA)
    checkpoint: str = ""
    preset: Optional[str] = None
    max_steps: Optional[int] = None
    seed: Optional[int] = None
    extra: list[str] = field(default_factory=list)  # key=value lines from the "advanced" box


@dataclass
class Recipe:
    name: str
    config: str  # relative to the repository root
    needs: tuple[str, ...]  # of "views", "prompt", "image", "checkpoint"
    checkpoint_key: Optional[str] = None
    presets: bool = False
    description: str = ""
    available: Callable[[], bool] = lambda: True
    # staged inputs -> recipe-specific key=value overrides
    overrides: Callable[[JobInputs, str], list[str]] = lambda inputs, staging: []

    def build_overrides(self, inputs: JobInputs, staging: str) -> list[str]:
        """All `key=value` arguments of the job, checked: recipe inputs, checkpoint, preset, steps, seed, extra."""
        for need in self.needs:
            if need == "prompt" and not inputs.prompt.strip():
                raise RecipeInputError(f"{self.name}: write a prompt.")
            if need == "image" and not inputs.image:
                raise RecipeInputError(f"{self.name}: upload an RGBA image of the object.")
            if need == "checkpoint":
                path = os.path.expanduser(inputs.checkpoint.strip())
                if not path:
                    raise RecipeInputError(f"{self.name}: give the local path of the checkpoint "
                                           f"({self.checkpoint_key}); nothing is downloaded.")
                if not os.path.exists(path):
                    raise RecipeInputError(f"{self.name}: checkpoint '{path}' does not exist.")
        args = self.overrides(inputs, staging)
        if "checkpoint" in self.needs and self.checkpoint_key:
            args.append(f"{self.checkpoint_key}={os.path.abspath(os.path.expanduser(inputs.checkpoint.strip()))}")
        if inputs.preset and self.presets:
            args.append(f"preset={inputs.preset}")
        if inputs.max_steps:
            args.append(f"trainer.max_steps={int(inputs.max_steps)}")
        if inputs.seed is not None:
            args.append(f"seed={int(inputs.seed)}")
        for line in inputs.extra:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise RecipeInputError(f"advanced override '{line}' is not of the form key=value.")
            args.append(line)
        return args


def _copy(src: str, dst_dir: str) -> str:
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, os.path.basename(src))
    shutil.copyfile(src, dst)
    return dst


def _extract_zip(path: str, dst: str) -> None:
    """Extract a zip, refusing members that would land outside `dst`."""
    root = os.path.realpath(dst)
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            target = os.path.realpath(os.path.join(dst, member))
            if not (target == root or target.startswith(root + os.sep)):
                raise RecipeInputError(f"zip member '{member}' would be written outside the staging folder.")
        archive.extractall(dst)


def _dataset_root(folder: str) -> str:
    """The folder holding transforms*.json (the zip's top level or its single subfolder)."""
    for current, _, files in os.walk(folder):
        if any(f.startswith("transforms") and f.endswith(".json") for f in files):
            return current
    raise RecipeInputError("the zip holds no transforms*.json (NeRF-synthetic / instant-ngp layout).")


def stage_views(files: list[str], staging: str) -> Optional[str]:
    """Copy the uploaded views into `staging` and return the `data.dataroot` to use (None: nothing uploaded).

    - one zip: a dataset folder with transforms*.json;
    - one video: an orbit video (evenly spaced azimuths, the last frame is the input view);
    - images + transforms*.json: copied flat; each frame's `file_path` is rewritten to its basename, because
      uploads lose their folders.
    """
    files = [f for f in files or [] if f]
    if not files:
        return None
    os.makedirs(staging, exist_ok=True)
    lower = [f.lower() for f in files]
    if len(files) == 1 and lower[0].endswith(".zip"):
        _extract_zip(files[0], os.path.join(staging, "dataset"))
        return _dataset_root(os.path.join(staging, "dataset"))
    if len(files) == 1 and lower[0].endswith(VIDEO_EXTENSIONS):
        return _copy(files[0], staging)
    transforms = [f for f in files if os.path.basename(f).startswith("transforms") and f.lower().endswith(".json")]
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not transforms or not images:
        raise RecipeInputError("upload RGBA views together with their transforms.json, or one orbit video, or one "
                               "zip of a dataset folder.")
    folder = os.path.join(staging, "views")
    for image in images:
        _copy(image, folder)
    for path in transforms:
        with open(path) as fp:
            meta = json.load(fp)
        for frame in meta.get("frames", []):
            frame["file_path"] = os.path.basename(str(frame.get("file_path", "")))
        with open(os.path.join(folder, os.path.basename(path)), "w") as fp:
            json.dump(meta, fp, indent=1)
    return folder


def _reconstruction(inputs: JobInputs, staging: str) -> list[str]:
    root = stage_views(inputs.files, staging)
    if root is None:  # the bundled example object
        root = os.path.join(REPO_ROOT, "load", "example_primitives")
    return [f"data.dataroot={root}"]


def _mvdream(inputs: JobInputs, staging: str) -> list[str]:
    return [f"system.prompt_processor.prompt={inputs.prompt.strip()}"]


def _sv3d(inputs: JobInputs, staging: str) -> list[str]:
    return [f"data.image_path={_copy(inputs.image, staging)}"]


def _package(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


RECIPES: list[Recipe] = [
    Recipe("Images → textured mesh", "configs/reconstruction-example.yaml", ("views",),
           description="RGBA views + transforms.json, an orbit video or a zip; empty: the bundled example object.",
           overrides=_reconstruction),
    Recipe("Text → 3D (MVDream)", "configs/mvdream-sd21.yaml", ("prompt", "checkpoint"),
           checkpoint_key="system.guidance.pretrained_model_name_or_path", presets=True,
           description="Score distillation from MVDream (sd-v2.1-base-4view.pt).", overrides=_mvdream,
           available=_package("mvdream")),
    Recipe("Image → 3D (SV3D)", "configs/sv3d-image-to-3d.yaml", ("image", "checkpoint"),
           checkpoint_key="system.guidance.pretrained_model_name_or_path", presets=True,
           description="Score distillation from SV3D (sv3d_u / sv3d_p .safetensors) and one RGBA image.",
           overrides=_sv3d, available=_package("sv3d")),
]


def available_recipes() -> list[Recipe]:
    return [r for r in RECIPES if r.available() and os.path.isfile(os.path.join(REPO_ROOT, r.config))]


def find_recipe(name: str) -> Recipe:
    for recipe in available_recipes():
        if recipe.name == name:
            return recipe
    raise RecipeInputError(f"unknown recipe '{name}'.")
