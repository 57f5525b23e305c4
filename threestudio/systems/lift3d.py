"""Base of the systems that optimise a 3D field: geometry + material + background + renderer (+ exporter)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from threestudio.systems.base import BaseSystem
from threestudio.utils.base import build_module
from threestudio.utils.config import ConfigError

logger = logging.getLogger("threestudio")
PANELS = ("rgb", "normal", "opacity", "depth")
# below this largest opacity over every validation view the field is empty: the density collapsed
COLLAPSED_OPACITY = 1e-3


class BaseLift3DSystem(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = "implicit-volume"
        geometry: dict = field(default_factory=dict)
        material_type: str = "no-material"
        material: dict = field(default_factory=dict)
        background_type: str = "solid-color-background"
        background: dict = field(default_factory=dict)
        # refinement: initialise the geometry from a coarse trial's checkpoint (its configs/parsed.yaml gives
        # the coarse geometry, `geometry_convert_override` changes keys of it, e.g. isosurface_threshold)
        geometry_convert_from: Optional[str] = None
        geometry_convert_inherit_texture: bool = False
        geometry_convert_override: dict = field(default_factory=dict)
        renderer_type: str = "nerf-volume-renderer"
        renderer: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)
        # what the validation images and the test video show, side by side
        validation_panels: list = field(default_factory=lambda: ["rgb", "normal", "opacity"])
        test_panels: list = field(default_factory=lambda: ["rgb"])

    cfg: Config

    def configure(self) -> None:
        for key in ("validation_panels", "test_panels"):
            unknown = [p for p in getattr(self.cfg, key) if p not in PANELS]
            if unknown:
                raise ConfigError(f"system.{key}: unknown panel(s) {unknown}; choose from {list(PANELS)}.")
        self.geometry = build_module(self.cfg.geometry_type, self.cfg.geometry, "system.geometry")
        # refinement: the coarse trial is converted (and its paths checked) when training starts from scratch,
        # not when a checkpoint of this trial is resumed, tested or exported: that holds the converted geometry
        self._convert_pending = bool(self.cfg.geometry_convert_from) and self.cfg.weights is None
        self.material = build_module(self.cfg.material_type, self.cfg.material, "system.material")
        self.background = build_module(self.cfg.background_type, self.cfg.background, "system.background")
        self.renderer = build_module(
            self.cfg.renderer_type, self.cfg.renderer, "system.renderer",
            geometry=self.geometry, material=self.material, background=self.background,
        )
        # built now so that bad exporter settings stop the run before training, not after it
        self.exporter = build_module(
            self.cfg.exporter_type, self.cfg.exporter, "system.exporter",
            geometry=self.geometry, material=self.material, background=self.background,
        )
        self._val_max_opacity: float | None = None

    def _coarse_trial_config(self, checkpoint: str) -> str:
        """<trial>/configs/parsed.yaml of a coarse checkpoint; errors name system.geometry_convert_from."""
        if not os.path.isfile(checkpoint):
            raise ConfigError(f"system.geometry_convert_from: no checkpoint at '{checkpoint}' (give a coarse "
                              "trial's ckpts/last.ckpt).")
        parsed = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), os.pardir, "configs", "parsed.yaml")
        if not os.path.isfile(parsed):
            raise ConfigError(f"system.geometry_convert_from: '{checkpoint}' is not in a trial folder "
                              f"(no {os.path.normpath(parsed)} describing its geometry).")
        import threestudio

        if not hasattr(threestudio.find(self.cfg.geometry_type), "create_from"):
            raise ConfigError(f"system.geometry_type '{self.cfg.geometry_type}' cannot be converted from another "
                              "geometry (no create_from); remove system.geometry_convert_from.")
        return parsed

    def convert_geometry(self, checkpoint: str) -> Any:
        """The geometry of `system.geometry_type` made from a coarse trial's geometry (threestudio's
        geometry_convert_from): the coarse geometry is rebuilt from <trial>/configs/parsed.yaml (plus
        geometry_convert_override), loaded from `checkpoint`, and passed to the new type's `create_from`."""
        from omegaconf import OmegaConf

        import threestudio
        from threestudio.utils.misc import load_module_weights

        coarse = OmegaConf.load(self._coarse_trial_config(checkpoint)).get("system", {})
        coarse_type = coarse.get("geometry_type", "implicit-volume")
        coarse_cfg = OmegaConf.merge(coarse.get("geometry", {}), self.cfg.geometry_convert_override)
        coarse_geometry = build_module(coarse_type, coarse_cfg, "system.geometry_convert_override")
        state_dict, epoch, global_step = load_module_weights(checkpoint, module_name="geometry")
        coarse_geometry.load_state_dict(state_dict)
        coarse_geometry.do_update_step(epoch, global_step, on_load_weights=True)
        return threestudio.find(self.cfg.geometry_type).create_from(
            coarse_geometry, self.cfg.geometry, copy_net=self.cfg.geometry_convert_inherit_texture,
            config_path="system.geometry")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._convert_pending = False  # the checkpoint holds the converted (and trained) geometry

    def on_train_start(self) -> None:
        if self._convert_pending:
            converted = self.convert_geometry(self.cfg.geometry_convert_from)
            # in place: the optimizer already holds the geometry's parameters
            self.geometry.load_state_dict(converted.state_dict())
            self._convert_pending = False

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.renderer(**batch)

    # ------------------------------------------------------------------ images
    def _panels(self, out: dict[str, Tensor], names: list, index: int = 0) -> list[dict]:
        if self._trainer is not None and self.trainer.validating and "opacity" in out:
            current = float(out["opacity"].detach().max())
            self._val_max_opacity = max(self._val_max_opacity or 0.0, current)
        panels = []
        for name in names:
            if name == "rgb":
                panels.append({"img": out["comp_rgb"][index]})
            elif name == "normal" and "comp_normal" in out:
                opacity = out["opacity"][index]
                normal = (out["comp_normal"][index] + 1) / 2
                panels.append({"img": normal * opacity + (1 - opacity)})
            elif name == "opacity":
                panels.append({"img": out["opacity"][index, ..., 0]})
            elif name == "depth" and "depth" in out:
                depth = out["depth"][index, ..., 0]
                mask = out["opacity"][index, ..., 0] > 0.5
                lo, hi = (depth[mask].min(), depth[mask].max()) if mask.any() else (0.0, 1.0)
                panels.append({"img": ((depth - lo) / (hi - lo + 1e-6)).clamp(0, 1) * mask})
        return panels

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        index = int(batch["index"][0]) if "index" in batch else batch_idx
        self.save_image_grid(f"{self.step_prefix()}-{index}.png", self._panels(out, self.cfg.validation_panels))

    def on_validation_epoch_start(self) -> None:
        self._val_max_opacity = None

    def on_validation_epoch_end(self) -> None:
        """Report a collapsed (diverged) density here, not at export time."""
        opacity = self._val_max_opacity
        if opacity is None:
            return
        self.log("val/max_opacity", opacity)
        if opacity < COLLAPSED_OPACITY:
            logger.warning(
                "Validation at step %d: every view renders empty (largest opacity %.2g): the density has "
                "collapsed to zero and training has diverged or not started. Check the learning rate, the loss "
                "weights and the density bias; an export from this state would be empty.",
                self.true_global_step, opacity)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        index = int(batch["index"][0]) if "index" in batch else batch_idx
        self.save_image_grid(f"{self.step_prefix()}-test/{index}.png", self._panels(out, self.cfg.test_panels))

    def on_test_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.save_img_sequence(f"{self.step_prefix()}-test.mp4", f"{self.step_prefix()}-test",
                                   fps=self.cfg.test_video_fps)

    # ------------------------------------------------------------------ export
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # export needs no per-view work; the exporter runs once at the end of the epoch
        return None

    def on_predict_epoch_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        exporter = self.exporter
        out_dir = self.output_path(f"{self.step_prefix()}-export")
        os.makedirs(out_dir, exist_ok=True)
        with torch.no_grad():
            exporter(out_dir)
