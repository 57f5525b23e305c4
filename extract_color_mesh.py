"""Vertex-coloured mesh of a trained trial, in the spirit of the MVDream seed's `extract_color_mesh.py`.

    python extract_color_mesh.py outputs/<name>/<trial> [--resolution 256] [--threshold 30] [--n-views 16]

Reads `<trial>/configs/parsed.yaml` and `<trial>/ckpts/last.ckpt`, samples the density on a resolution^3
grid, runs marching cubes at `--threshold` (enclosed empty pockets filled), keeps the largest connected component, renders views around
the object and gives each vertex the mean colour of the views that see it (a vertex counts as seen when
its distance to the camera matches the rendered depth at its pixel: the occlusion test). Vertices no view
sees get the field's own colour. Writes `<trial>/save/it{N}-mesh_color.ply` (or `--out`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Optional

import numpy as np
import torch

logger = logging.getLogger("extract_color_mesh")


def load_trial(trial: str, ckpt: Optional[str] = None) -> tuple[Any, dict, int]:
    """(config, modules {geometry, material, background, renderer}, global step) of a trial folder."""
    from threestudio.utils.base import build_module
    from threestudio.utils.config import load_config
    from threestudio.utils.misc import checkpoint_state_dict, load_partial_state_dict, read_checkpoint

    cfg_path = os.path.join(trial, "configs", "parsed.yaml")
    ckpt = ckpt or os.path.join(trial, "ckpts", "last.ckpt")
    for path, what in ((cfg_path, "config"), (ckpt, "checkpoint")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {what} at '{path}': give a trial folder of launch.py "
                                    "(outputs/<name>/<trial>) or --ckpt.")
    cfg = load_config(cfg_path)
    s = cfg.system
    geometry = build_module(s["geometry_type"], s.get("geometry", {}), "system.geometry")
    material = build_module(s["material_type"], s.get("material", {}), "system.material")
    background = build_module(s["background_type"], s.get("background", {}), "system.background")
    renderer = build_module(s["renderer_type"], s.get("renderer", {}), "system.renderer",
                            geometry=geometry, material=material, background=background)
    state = read_checkpoint(ckpt)  # weights-only: a checkpoint never runs code
    tensors = checkpoint_state_dict(state, ckpt)
    modules = {"geometry": geometry, "material": material, "background": background, "renderer": renderer}
    for name, module in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if module.state_dict() or sub:
            load_partial_state_dict(module, sub, f"checkpoint '{ckpt}'", f"system.{name}")
        module.eval()
    return cfg, modules, int(state.get("global_step", 0) or 0)


def largest_component(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    keep = labels == np.bincount(labels).argmax()
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64)


@torch.no_grad()
def render_view(renderer: Any, batch: dict, chunk: int = 16384) -> dict[str, torch.Tensor]:
    """comp_rgb_fg, opacity and depth (H,W,C) of a one-view camera batch, rendered in chunks of rays."""
    rays_o, rays_d = batch["rays_o"].reshape(1, -1, 1, 3), batch["rays_d"].reshape(1, -1, 1, 3)
    height, width = batch["rays_o"].shape[1:3]
    outs: dict[str, list] = {"comp_rgb_fg": [], "opacity": [], "depth": []}
    for start in range(0, rays_o.shape[1], chunk):
        out = renderer(rays_o[:, start:start + chunk], rays_d[:, start:start + chunk], batch["light_positions"],
                       bg_color=torch.zeros(3))
        for key in outs:
            outs[key].append(out[key])
    return {k: torch.cat(v, dim=1).reshape(height, width, -1) for k, v in outs.items()}


def project(vertices: torch.Tensor, c2w: torch.Tensor, fovy_deg: float, height: int, width: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (V,2) (x right, y down) and camera-space depth along -z (V,) of world points."""
    w2c = torch.linalg.inv(c2w)
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    focal = 0.5 * height / np.tan(np.radians(fovy_deg) / 2)
    z = -cam[:, 2]
    x = focal * cam[:, 0] / z.clamp_min(1e-6) + width / 2
    y = -focal * cam[:, 1] / z.clamp_min(1e-6) + height / 2
    return torch.stack([x, y], dim=-1), z


def bilinear(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Sample (H,W,C) at continuous pixel coordinates (N,2) (texel centres at i + 0.5)."""
    height, width = image.shape[:2]
    grid = torch.stack([xy[:, 0] / width * 2 - 1, xy[:, 1] / height * 2 - 1], dim=-1)
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid[None, None], align_corners=False,
                                          mode="bilinear", padding_mode="border")
    return out[0, :, 0].T


def color_vertices(renderer: Any, vertices: np.ndarray, normals: np.ndarray, elevations: list[float], n_views: int,
                   distance: float, fovy_deg: float, size: int, depth_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean rendered colour per vertex over the views where it passes the occlusion test; (colours, n_seen)."""
    from threestudio.data.camera_sampling import orbit_cameras

    v = torch.as_tensor(vertices, dtype=torch.float32)
    n = torch.as_tensor(normals, dtype=torch.float32)
    total = torch.zeros(len(v), 3)
    seen = torch.zeros(len(v))
    for elevation in elevations:
        cams = orbit_cameras(n_views, elevation, distance, fovy_deg, size, size)
        for i in range(n_views):
            batch = {k: (val[i:i + 1] if torch.is_tensor(val) and val.dim() > 0 else val) for k, val in cams.items()}
            out = render_view(renderer, batch)
            xy, _ = project(v, batch["c2w"][0], fovy_deg, size, size)
            cam_pos = batch["c2w"][0, :3, 3]
            ray_dist = (v - cam_pos).norm(dim=-1)
            in_image = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
            opacity = bilinear(out["opacity"], xy)[:, 0]
            # renderer depth is opacity-weighted: divide to get the expected hit distance along the ray
            depth = bilinear(out["depth"], xy)[:, 0] / opacity.clamp_min(1e-6)
            facing = (n * (cam_pos - v)).sum(-1) > 0
            visible = in_image & facing & (opacity > 0.5) & ((depth - ray_dist).abs() < depth_tolerance)
            rgb = bilinear(out["comp_rgb_fg"], xy) / opacity.clamp_min(1e-6)[:, None]
            total[visible] += rgb[visible].clamp(0, 1)
            seen[visible] += 1
    colors = total / seen.clamp_min(1)[:, None]
    return colors.numpy(), seen.numpy()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trial", help="trial folder (outputs/<name>/<tag>@<timestamp>)")
    parser.add_argument("--ckpt", default=None, help="checkpoint (default: <trial>/ckpts/last.ckpt)")
    parser.add_argument("--resolution", type=int, default=256, help="density grid size N (N^3 samples)")
    parser.add_argument("--threshold", type=float, default=30.0, help="density level of the surface")
    parser.add_argument("--n-views", type=int, default=16, help="views per elevation for the colours")
    parser.add_argument("--elevations", default="-20,15,50", help="comma-separated view elevations (degrees)")
    parser.add_argument("--distance", type=float, default=2.5)
    parser.add_argument("--fovy", type=float, default=40.0)
    parser.add_argument("--view-size", type=int, default=256)
    parser.add_argument("--depth-tolerance", type=float, default=None,
                        help="occlusion test tolerance in world units (default: 3 grid cells)")
    parser.add_argument("--out", default=None, help="output PLY (default: <trial>/save/it{N}-mesh_color.ply)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import trimesh

    from threestudio.models.exporters.isosurface import ExportError, extract_isosurface
    from threestudio.models.exporters.mesh_exporter import query_albedo
    from threestudio.models.exporters.mesh_io import write_vertex_color_ply

    from threestudio.utils.config import ConfigError
    from threestudio.utils.misc import CheckpointError

    try:
        _, modules, step = load_trial(args.trial, args.ckpt)
    except (FileNotFoundError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    geometry, material, renderer = modules["geometry"], modules["material"], modules["renderer"]
    radius = float(getattr(geometry.cfg, "radius", 1.0))
    try:
        # enclosed empty pockets (the never-seen interior) would become inner surfaces: filled
        vertices, faces, _ = extract_isosurface(geometry.forward_density, args.resolution, args.threshold, radius,
                                                cavities=True)
    except ExportError as e:
        print(f"error: {e}".replace("system.exporter.isosurface_threshold", "--threshold"), file=sys.stderr)
        return 1
    vertices, faces = largest_component(vertices, faces)
    normals = np.asarray(trimesh.Trimesh(vertices, faces, process=False).vertex_normals, dtype=np.float32)
    logger.info("mesh: %d vertices, %d faces", len(vertices), len(faces))
    tolerance = args.depth_tolerance or 3 * 2 * radius / (args.resolution - 1)
    elevations = [float(e) for e in args.elevations.split(",") if e.strip()]
    colors, seen = color_vertices(renderer, vertices, normals, elevations, args.n_views, args.distance, args.fovy,
                                  args.view_size, tolerance)
    unseen = seen == 0
    if unseen.any():
        logger.info("%d vertices seen by no view: using the field's colour there", int(unseen.sum()))
        colors[unseen] = query_albedo(geometry, material, vertices[unseen])
    out = args.out or os.path.join(args.trial, "save", f"it{step}-mesh_color.ply")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_vertex_color_ply(out, vertices, faces, colors)
    print(f"wrote {out} ({len(vertices)} vertices, {len(faces)} faces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
