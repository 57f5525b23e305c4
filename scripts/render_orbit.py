"""Render a textured mesh (GLB/glTF/OBJ/PLY) to an orbit of RGBA views with `transforms.json` and an
`svd_meta.jsonl` line: reconstruction test data, SVD-MV / SV3D fine-tuning data, or a preview of an export.

    python scripts/render_orbit.py mesh.glb --views 21 --elevation 20 --res 576 --out DIR

Cameras follow the orbit convention (DESIGN.md §3): evenly spaced azimuths, the LAST frame at azimuth
`--azimuth-offset` (the input view), looking at the origin from `--distance` with a `--fovy` field of view;
z-up world. `--up auto` reads the up axis our exporter records in OBJ/GLB files (y by default), assumes y
for other OBJ/glTF files and z for PLY, and rotates the mesh into the z-up world. Colours are unlit (the texture / vertex colours); alpha is the antialiased
coverage. Writes DIR/000.png ..., DIR/transforms.json (NeRF-synthetic layout, readable by
multiview-image-datamodule) and DIR/svd_meta.jsonl ({"image_path": [...], "elevation": [...]}, one line);
`--meta FILE` also appends that line to a shared FILE. Refuses to overwrite an existing orbit in DIR.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from threestudio.data.multiview_sources import orbit_azimuths  # noqa: E402
from threestudio.models.exporters.mesh_io import file_up_axis, world_to_file  # noqa: E402
from threestudio.models.rasterization import DifferentiableRasterizer  # noqa: E402
from threestudio.utils.ops import get_mvp_matrix, get_projection_matrix, orbit_c2w  # noqa: E402


class TexturedMesh:
    """vertices (V,3) z-up, faces (F,3), and either uv (V,2) + texture (S,S,3) or colors (V,3), in [0,1]."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, uv: Optional[np.ndarray] = None,
                 texture: Optional[np.ndarray] = None, colors: Optional[np.ndarray] = None) -> None:
        self.vertices, self.faces, self.uv, self.texture, self.colors = vertices, faces, uv, texture, colors


def load_mesh(path: str, up: str = "auto") -> TexturedMesh:
    import trimesh

    if not os.path.isfile(path):
        raise SystemExit(f"render_orbit: no mesh file at '{path}'.")
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        if len(loaded.geometry) == 0:
            raise SystemExit(f"render_orbit: '{path}' contains no geometry.")
        if len(loaded.geometry) == 1:
            # keep the node transform but not a concatenation that would drop the texture
            name, geom = next(iter(loaded.geometry.items()))
            nodes = loaded.graph.geometry_nodes.get(name, [])
            mesh = geom.copy()
            if nodes:
                mesh.apply_transform(loaded.graph.get(nodes[0])[0])
        else:
            mesh = loaded.dump(concatenate=True)
    else:
        mesh = loaded
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        raise SystemExit(f"render_orbit: '{path}' has no triangles.")
    if up == "auto":  # our exports record their up axis; other OBJ/glTF files are y-up, PLY z-up
        up = file_up_axis(path) if os.path.splitext(path)[1].lower() in (".glb", ".gltf", ".obj") else "z"
    vertices = np.asarray(mesh.vertices, dtype=np.float64) @ np.linalg.inv(world_to_file(up))[:3, :3].T
    faces = np.asarray(mesh.faces, dtype=np.int64)
    visual = mesh.visual
    uv = getattr(visual, "uv", None)
    material = getattr(visual, "material", None)
    image = None
    if material is not None:
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if uv is not None and image is not None:
        texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return TexturedMesh(vertices.astype(np.float32), faces, np.asarray(uv, np.float32), texture)
    colors = None
    if getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    elif material is not None and getattr(material, "baseColorFactor", None) is not None:
        colors = np.tile(np.asarray(material.baseColorFactor, np.float32)[:3] / 255.0, (len(vertices), 1))
    if colors is None:
        colors = np.full((len(vertices), 3), 0.7, dtype=np.float32)
    return TexturedMesh(vertices.astype(np.float32), faces, colors=colors)


def orbit_cameras(views: int, elevation: float, distance: float, azimuth_offset: float) -> tuple[torch.Tensor, ...]:
    azimuth = orbit_azimuths(views, azimuth_offset)
    elevations = torch.full((views,), float(elevation))
    c2w = orbit_c2w(elevations, azimuth, torch.full((views,), float(distance)))
    return c2w, elevations, azimuth


@torch.no_grad()
def render_views(mesh: TexturedMesh, c2w: torch.Tensor, fovy_deg: float, res: int, backend: str = "auto",
                 device: str = "cpu", batch: int = 4) -> np.ndarray:
    """(N, res, res, 4) RGBA in [0,1], straight (not premultiplied) colour."""
    r = DifferentiableRasterizer(backend, torch.device(device))
    proj = get_projection_matrix(torch.deg2rad(torch.tensor([fovy_deg])), 1.0)
    mvp = get_mvp_matrix(c2w, proj.expand(len(c2w), -1, -1)).to(device)
    vertices = torch.as_tensor(mesh.vertices, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int32, device=device)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
    topology = r.construct_topology(faces)
    if mesh.texture is not None:
        # OBJ/glTF-as-loaded uv has v up; the rasterizer's texture() reads row 0 at v = 0
        attr = torch.as_tensor(mesh.uv, device=device) * torch.tensor([1.0, -1.0], device=device) + \
            torch.tensor([0.0, 1.0], device=device)
        tex = torch.as_tensor(mesh.texture, device=device)[None]
    else:
        attr = torch.as_tensor(mesh.colors, device=device)
    out = []
    for start in range(0, len(mvp), batch):
        m = mvp[start:start + batch]
        clip = torch.einsum("vc,bdc->bvd", homo, m) * torch.tensor([1.0, -1.0, 1.0, 1.0], device=device)
        rast = r.rasterize(clip, faces, (res, res))
        values = r.interpolate(attr, rast, faces)
        color = r.texture(tex, values, boundary_mode="clamp") if mesh.texture is not None else values
        covered = (rast[..., 3:] > 0).float()
        premultiplied = torch.cat([color * covered, covered], dim=-1)
        rgba = r.antialias(premultiplied.contiguous(), rast, clip, faces, topology).clamp(0, 1)
        alpha = rgba[..., 3:]
        rgb = torch.where(alpha > 0, rgba[..., :3] / alpha.clamp(min=1e-6), torch.zeros_like(rgba[..., :3]))
        out.append(torch.cat([rgb.clamp(0, 1), alpha], dim=-1).cpu())
    return torch.cat(out).numpy()


def write_orbit(out_dir: str, rgba: np.ndarray, c2w: torch.Tensor, elevation: torch.Tensor, azimuth: torch.Tensor,
                fovy_deg: float, meta: Optional[str] = None) -> dict:
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    existing = [n for n in ("transforms.json", "svd_meta.jsonl", "000.png") if os.path.exists(os.path.join(out_dir, n))]
    if existing:
        raise SystemExit(f"render_orbit: '{out_dir}' already holds an orbit ({', '.join(existing)}); choose a new --out.")
    frames, paths = [], []
    for i, image in enumerate(rgba):
        name = f"{i:03d}.png"
        Image.fromarray((image * 255.0 + 0.5).astype(np.uint8), mode="RGBA").save(os.path.join(out_dir, name))
        paths.append(os.path.abspath(os.path.join(out_dir, name)))
        frames.append({"file_path": f"./{name}", "transform_matrix": c2w[i].tolist(),
                       "elevation": float(elevation[i]), "azimuth": float(azimuth[i])})
    fov = math.radians(fovy_deg)  # square images: the same angle across
    transforms = {"camera_angle_x": fov, "frames": frames}
    with open(os.path.join(out_dir, "transforms.json"), "w") as fp:
        json.dump(transforms, fp, indent=1)
    line = json.dumps({"image_path": paths, "elevation": [float(e) for e in elevation]})
    with open(os.path.join(out_dir, "svd_meta.jsonl"), "w") as fp:
        fp.write(line + "\n")
    if meta:
        with open(meta, "a") as fp:
            fp.write(line + "\n")
    return transforms


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mesh", help="a .glb / .gltf / .obj / .ply file")
    parser.add_argument("--out", required=True, help="output folder (must not hold an orbit already)")
    parser.add_argument("--views", type=int, default=21)
    parser.add_argument("--elevation", type=float, default=20.0, help="degrees")
    parser.add_argument("--res", type=int, default=576)
    parser.add_argument("--distance", type=float, default=2.0)
    parser.add_argument("--fovy", type=float, default=40.0, help="vertical field of view, degrees")
    parser.add_argument("--azimuth-offset", type=float, default=0.0, help="azimuth of the last frame, degrees")
    parser.add_argument("--up", choices=("auto", "y", "z"), default="auto",
                        help="the file's up axis (auto: as recorded by our exporter, else y; z for PLY)")
    parser.add_argument("--normalize", type=float, default=None, metavar="RADIUS",
                        help="centre the mesh and scale it into a sphere of this radius")
    parser.add_argument("--backend", default="auto", help="rasterizer backend: auto | cpu | torch | nvdiffrast")
    parser.add_argument("--meta", default=None, help="also append the svd_meta line to this file")
    args = parser.parse_args(argv)
    if args.views < 1 or args.res < 8:
        raise SystemExit("render_orbit: --views must be >= 1 and --res >= 8.")
    mesh = load_mesh(args.mesh, args.up)
    if args.normalize is not None:
        centre = (mesh.vertices.max(0) + mesh.vertices.min(0)) / 2
        mesh.vertices = mesh.vertices - centre
        mesh.vertices = mesh.vertices * (args.normalize / np.linalg.norm(mesh.vertices, axis=1).max())
    device = "cuda" if args.backend in ("auto", "nvdiffrast") and torch.cuda.is_available() else "cpu"
    c2w, elevation, azimuth = orbit_cameras(args.views, args.elevation, args.distance, args.azimuth_offset)
    rgba = render_views(mesh, c2w, args.fovy, args.res, args.backend, device)
    write_orbit(args.out, rgba, c2w, elevation, azimuth, args.fovy, args.meta)
    print(f"{args.views} views of {len(mesh.faces)} faces at {args.res}² -> {args.out}")


if __name__ == "__main__":
    main()
