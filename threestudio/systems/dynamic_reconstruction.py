"""`dynamic-reconstruction-system`: fit a time-varying field to a views x frames image matrix, then render a
4D video (an orbit while time runs, and a fixed-view clip) and export one textured mesh per frame.

Stage 2 of Diffusion² (its sampled views x frames matrix -> a dynamic 3D asset), or a synchronised
multi-camera capture. The geometry must offer `at_time(t)` (e.g. `dynamic-implicit-volume`); at a fixed
time it is a static field, so the renderer and the mesh exporter are the static system's, unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

import threestudio
from threestudio.systems.multiview_reconstruction import MultiviewReconstructionSystem
from threestudio.utils.batch import render_inputs
from threestudio.utils.config import ConfigError
from threestudio.utils.losses import psnr
from threestudio.utils.saving import to_uint8_image


def merge_renders(outs: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Renders of consecutive ray groups (each (1, n_k, 1, C) per ray, packed samples (S_k, C)) as one render
    of all rays: per-ray outputs are joined along the rays, packed samples along the samples with
    `ray_indices` shifted by the rays before them (so they stay sorted by ray)."""
    merged: dict[str, Tensor] = {}
    offsets, total = [], 0
    for out in outs:
        offsets.append(total)
        total += out["opacity"].shape[1]
    for key in outs[0]:
        values = [o[key] for o in outs]
        if not all(torch.is_tensor(v) for v in values):
            continue
        if key == "ray_indices":
            merged[key] = torch.cat([v + off for v, off in zip(values, offsets)])
        elif values[0].dim() == 4 and values[0].shape[0] == 1 and values[0].shape[2] == 1:
            merged[key] = torch.cat(values, dim=1)
        else:
            merged[key] = torch.cat(values, dim=0)
    return merged


@threestudio.register("dynamic-reconstruction-system")
class DynamicReconstructionSystem(MultiviewReconstructionSystem):
    @dataclass
    class Config(MultiviewReconstructionSystem.Config):
        # frame positions (0..F-1) to export meshes of; null: every frame
        export_frames: Optional[list] = None
        # sample points the temporal smoothness regulariser (lambda_temporal) looks at per step
        temporal_points: int = 4096
        # frames shown in the validation grid image
        val_grid: bool = True

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if not hasattr(self.geometry, "at_time"):
            raise ConfigError(f"system.geometry_type '{self.cfg.geometry_type}' is not time-dependent (no at_time); "
                              "use 'dynamic-implicit-volume'.")
        self._val_images: dict = {}

    # ------------------------------------------------------------------ rendering
    def render(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Rays with per-ray `times` (1, N, 1, 1), grouped by time, are rendered group by group at their time;
        a batch with a scalar `time` at that time; otherwise at the geometry's current time."""
        times = batch.get("times")
        if times is None:
            if "time" in batch:
                with self.geometry.at_time(float(batch["time"].reshape(-1)[0])):
                    return super().render(batch)
            return super().render(batch)
        values, counts = torch.unique_consecutive(times.reshape(-1), return_counts=True)
        outs, start = [], 0
        for t, n in zip(values.tolist(), counts.tolist()):
            # per-ray inputs (1, N, 1, C) are cut like the rays; per-view ones apply to every group
            sub = {k: v[:, start:start + n] if torch.is_tensor(v) and v.dim() == 4 else v
                   for k, v in render_inputs(batch).items()}
            with self.geometry.at_time(t):
                outs.append(super().render(sub))
            start += n
        return outs[0] if len(outs) == 1 else merge_renders(outs)

    @torch.no_grad()
    def render_view(self, batch: dict[str, Any], normals: bool = False) -> dict[str, Tensor]:
        with self.geometry.at_time(float(batch["time"].reshape(-1)[0])):
            return super().render_view(batch, normals)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the occupancy grid is updated here: it must cover the object at every time (a random time per point)
        with self.geometry.at_time("random"):
            super().on_train_batch_start(batch, batch_idx)

    def training_losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        losses = super().training_losses(out, batch)
        if self.loss_weight("temporal") > 0 and out.get("points") is not None and out["points"].shape[0] > 0:
            points = out["points"].detach()
            n = min(self.cfg.temporal_points, points.shape[0])
            pick = torch.randperm(points.shape[0], device=points.device)[:n]
            # at random times, not only the training frames': the motion between frames is what is regularised
            losses["temporal"] = self.geometry.temporal_smoothness(points[pick])
        return losses

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.render_view(batch, normals="normal" in self.cfg.validation_panels)
        self.log("val/psnr", psnr(out["comp_rgb"], batch["rgb"]), on_epoch=True, batch_size=1)
        # _panels also tracks the largest opacity (the base class warns when the density collapsed)
        rendered = self._panels(out, ["rgb"])[0]["img"]
        self._val_images[(int(batch["view"]), int(batch["frame"]))] = (batch["rgb"][0], rendered)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_images = {}

    def on_validation_epoch_end(self) -> None:
        """One image: a row of ground truth and a row of renders per view, one column per frame."""
        super().on_validation_epoch_end()
        if not self.cfg.val_grid or not self._val_images or not self.trainer.is_global_zero:
            return
        views = sorted({v for v, _ in self._val_images})
        frames = sorted({f for _, f in self._val_images})
        rows = []
        for v in views:
            for which in (0, 1):
                cells = [to_uint8_image(self._val_images[(v, f)][which]) if (v, f) in self._val_images else None
                         for f in frames]
                blank = np.full_like(next(c for c in cells if c is not None), 255)
                rows.append(np.concatenate([c if c is not None else blank for c in cells], axis=1))
        self.save_image(f"{self.step_prefix()}-val-grid.png", np.concatenate(rows, axis=0).astype(np.float32) / 255.0)
        self._val_images = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        kind = batch.get("kind", "orbit")
        out = self.render_view(batch, normals="normal" in self.cfg.test_panels)
        index = int(batch["index"][0])
        if kind == "heldout":
            value = psnr(out["comp_rgb"], batch["rgb"])
            self.log("test/psnr", value, on_epoch=True, batch_size=1)
            if batch.get("heldout_view") and not batch.get("heldout_frame"):
                self.log("test/psnr_novel_view", value, on_epoch=True, batch_size=1)
            elif batch.get("heldout_frame") and not batch.get("heldout_view"):
                self.log("test/psnr_novel_frame", value, on_epoch=True, batch_size=1)
            name = f"f{int(batch['frame']):02d}-v{int(batch['view']):02d}.png"
            self.save_image_grid(f"{self.step_prefix()}-heldout/{name}",
                                 [{"img": batch["rgb"][0]}] + self._panels(out, self.cfg.test_panels))
            return
        folder = "test" if kind == "orbit" else "test-fixed"
        self.save_image_grid(f"{self.step_prefix()}-{folder}/{index}.png", self._panels(out, self.cfg.test_panels))

    def on_test_epoch_end(self) -> None:
        """it{N}-test.mp4 (the 4D orbit), it{N}-test-fixed.mp4 (the fixed-view clip), then the export if asked."""
        if self.trainer.is_global_zero:
            for folder in ("test", "test-fixed"):
                if os.path.isdir(self.output_path(f"{self.step_prefix()}-{folder}")):
                    self.save_img_sequence(f"{self.step_prefix()}-{folder}.mp4", f"{self.step_prefix()}-{folder}",
                                           fps=self.cfg.test_video_fps)
        if self.cfg.export_after_test:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "predict_dataset"):
                frames = datamodule.predict_dataset()
                self.export_frames([frames[i] for i in range(len(frames))])

    # ------------------------------------------------------------------ export
    def on_predict_epoch_start(self) -> None:
        self._predict_frames: list = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._predict_frames.append(batch)

    def on_predict_epoch_end(self) -> None:
        self.export_frames(getattr(self, "_predict_frames", []))

    def export_frames(self, frames: list) -> list[dict]:
        """One textured mesh per selected frame in it{N}-export/frame_YY/ (the same world box, axes and scale
        for all), and it{N}-export/manifest.json listing frame, time and files."""
        if not self.trainer.is_global_zero or not frames:
            return []
        selected = frames
        if self.cfg.export_frames is not None:
            wanted = [int(f) for f in self.cfg.export_frames]
            known = {int(item["frame"]) for item in frames}
            unknown = [f for f in wanted if f not in known]
            if unknown:
                raise ConfigError(f"system.export_frames: {unknown} are not frame positions of the data "
                                  f"(0..{len(frames) - 1}).")
            selected = [item for item in frames if int(item["frame"]) in wanted]
        exporter = self.exporter
        root = self.output_path(f"{self.step_prefix()}-export")
        entries = []
        for item in selected:
            frame_id, t = int(item["frame_id"]), float(item["time"].reshape(-1)[0])
            name = f"frame_{frame_id:02d}"
            with torch.no_grad(), self.geometry.at_time(t):
                files = exporter(os.path.join(root, name))
            entries.append({"frame": int(item["frame"]), "frame_id": frame_id, "time": t, "folder": name,
                            "files": [os.path.relpath(f, root) for f in files]})
        self.save_json(os.path.join(f"{self.step_prefix()}-export", "manifest.json"), {
            # every frame is written in the same world box, axes and scale (the files' up axis is the exporter's)
            "up_axis": getattr(exporter.cfg, "up_axis", "z"),
            "radius": exporter.radius() if hasattr(exporter, "radius") else None,
            "step": self.true_global_step, "frames": entries})
        return entries
