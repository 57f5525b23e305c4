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
    checkpoint2: str = ""  # a second model (Diffusion²: SVD-xt next to SV3D_p)
    preset: Optional[str] = None
    max_steps: Optional[int] = None
    seed: Optional[int] = None
    extra: list[str] = field(default_factory=list)  # key=value lines from the "advanced" box


@dataclass
class Recipe:
    name: str
    config: Optional[str]  # relative to the repository root; None for a pipeline with its own `command`
    needs: tuple[str, ...]  # of "views", "prompt", "image", "checkpoint", "checkpoint2"
    checkpoint_key: Optional[str] = None
    presets: bool = False
    description: str = ""
    available: Callable[[], bool] = lambda: True
    # staged inputs -> recipe-specific key=value overrides
    overrides: Callable[[JobInputs, str], list[str]] = lambda inputs, staging: []
    # pipelines with their own command line (not a launch.py config): (inputs, staging, output folder) -> argv;
    # the app watches the output folder for progress.json (a launch.py stage inside) and videos / meshes
    command: Optional[Callable[[JobInputs, str, str], list[str]]] = None

    def build_overrides(self, inputs: JobInputs, staging: str) -> list[str]:
        """All `key=value` arguments of the job, checked: recipe inputs, checkpoint, preset, steps, seed, extra."""
        for need in self.needs:
            if need == "prompt" and not inputs.prompt.strip():
                raise RecipeInputError(f"{self.name}: write a prompt.")
            if need == "image" and not inputs.image:
                raise RecipeInputError(f"{self.name}: upload an RGBA image of the object.")
            if need in ("checkpoint", "checkpoint2"):
                path = os.path.expanduser((inputs.checkpoint if need == "checkpoint" else inputs.checkpoint2).strip())
                if not path:
                    raise RecipeInputError(f"{self.name}: give the local path of the checkpoint "
                                           f"({self.checkpoint_key}); nothing is downloaded.")
                if not os.path.exists(path):
                    raise RecipeInputError(f"{self.name}: checkpoint '{path}' does not exist.")
        args = [] if self.command is not None else self.overrides(inputs, staging)
        if "checkpoint" in self.needs and self.checkpoint_key:
            args.append(f"{self.checkpoint_key}={os.path.abspath(os.path.expanduser(inputs.checkpoint.strip()))}")
        if inputs.preset and self.presets:
            args.append(f"preset={inputs.preset}")
        if inputs.max_steps:
            args.append(f"trainer.max_steps={int(inputs.max_steps)}")
        if inputs.seed is not None and self.command is None:
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


def _hi3d(inputs: JobInputs, staging: str, out: str) -> list[str]:
    """Hi3D's three stages (python -m hi3d.run); stage 3 is a launch.py reconstruction in <out>/hi3d/mesh."""
    argv = ["-m", "hi3d.run", "--image", _copy(inputs.image, staging), "--out", out,
            "--ckpt-dir", os.path.abspath(os.path.expanduser(inputs.checkpoint.strip())),
            "--launch", os.path.join(REPO_ROOT, "launch.py")]
    if inputs.seed is not None:
        argv += ["--seed", str(int(inputs.seed))]
    if inputs.max_steps:
        argv += ["--recon-steps", str(int(inputs.max_steps))]
    for line in inputs.extra:
        if line.strip() and not line.strip().startswith("#"):
            argv += ["--recon-override", line.strip()]
    return argv


def _diffusion2(inputs: JobInputs, staging: str, out: str) -> list[str]:
    """Diffusion²'s joint multiview x video sampling (python -m diffusion2.sample): videos, no mesh."""
    argv = ["-m", "diffusion2.sample", "--input_path", _copy(inputs.image, staging), "--out", out,
            "--sv3d", os.path.abspath(os.path.expanduser(inputs.checkpoint.strip())),
            "--svd", os.path.abspath(os.path.expanduser(inputs.checkpoint2.strip()))]
    if inputs.seed is not None:
        argv += ["--seed", str(int(inputs.seed))]
    return argv


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
    # shown once their packages are installed (extensions/hi3d, extensions/diffusion2)
    Recipe("Image → 3D (Hi3D)", None, ("image", "checkpoint"),
           description="Hi3D: 16 views (stage 1), 1024² refinement (stage 2), reconstruction (stage 3). Checkpoint: "
                       "the folder with first_stage.pt, second_stage.pt and the auxiliary files.",
           command=_hi3d, available=_package("hi3d")),
    Recipe("Image → 4D views (Diffusion²)", None, ("image", "checkpoint", "checkpoint2"),
           description="Diffusion²: joint SV3D_p x SVD-xt sampling of views x frames. Checkpoint: sv3d_p.safetensors; "
                       "second checkpoint: svd_xt.safetensors.",
           command=_diffusion2, available=_package("diffusion2")),
]


def available_recipes() -> list[Recipe]:
    return [r for r in RECIPES if r.available() and (r.config is None or os.path.isfile(os.path.join(REPO_ROOT, r.config)))]


def find_recipe(name: str) -> Recipe:
    for recipe in available_recipes():
        if recipe.name == name:
            return recipe
    raise RecipeInputError(f"unknown recipe '{name}'.")
