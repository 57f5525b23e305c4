"""Writing textured meshes: OBJ + MTL + PNG, binary glTF (GLB) and vertex-coloured PLY."""
from __future__ import annotations

import io
import os

import numpy as np
import trimesh
from PIL import Image

# z-up world (DESIGN.md §3) -> glTF's y-up: (x, y, z) -> (x, z, -y)
Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fp:
        fp.write(data)
    os.replace(tmp, path)


def texture_to_uint8(texture: np.ndarray) -> np.ndarray:
    return (np.clip(texture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_textured_obj(out_dir: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
                       name: str = "model", texture_name: str = "texture_kd.png") -> list[str]:
    """`name`.obj + `name`.mtl + `texture_name` (diffuse map). Vertex i has uv i (seams already split)."""
    os.makedirs(out_dir, exist_ok=True)
    image_path = os.path.join(out_dir, texture_name)
    buffer = io.BytesIO()
    Image.fromarray(texture_to_uint8(texture)).save(buffer, format="PNG")
    _atomic_write_bytes(image_path, buffer.getvalue())
    mtl = (f"newmtl material_0\nKa 0.0 0.0 0.0\nKd 1.0 1.0 1.0\nKs 0.0 0.0 0.0\nd 1.0\nillum 1\n"
           f"map_Kd {texture_name}\n")
    mtl_path = os.path.join(out_dir, f"{name}.mtl")
    _atomic_write_bytes(mtl_path, mtl.encode())
    out = io.StringIO()
    out.write(f"# {len(vertices)} vertices, {len(faces)} faces\nmtllib {name}.mtl\nusemtl material_0\n")
    np.savetxt(out, vertices, fmt="v %.6f %.6f %.6f")
    np.savetxt(out, uv, fmt="vt %.6f %.6f")
    f1 = faces + 1
    np.savetxt(out, np.repeat(f1, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    obj_path = os.path.join(out_dir, f"{name}.obj")
    _atomic_write_bytes(obj_path, out.getvalue().encode())
    return [obj_path, mtl_path, image_path]


def textured_trimesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(texture_to_uint8(texture)), metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def write_glb(path: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
              y_up: bool = True) -> str:
    """Binary glTF with a base-colour texture; `y_up` rotates the z-up world into glTF's y-up frame."""
    mesh = textured_trimesh(vertices, faces, uv, texture)
    if y_up:
        mesh.apply_transform(Z_UP_TO_Y_UP)
    _atomic_write_bytes(path, mesh.export(file_type="glb"))
    return path


def write_vertex_color_ply(path: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> str:
    """Binary PLY with per-vertex RGB colours in [0,1]."""
    rgba = np.concatenate([texture_to_uint8(colors), np.full((len(colors), 1), 255, np.uint8)], axis=-1)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False)
    _atomic_write_bytes(path, mesh.export(file_type="ply"))
    return path
