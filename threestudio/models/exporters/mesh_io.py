"""Writing textured meshes: OBJ + MTL + PNG, binary glTF (GLB) and vertex-coloured PLY.

Up axis: the world is z-up (docs/architecture.md), glTF and most viewers and DCC tools are y-up. Both the OBJ
and the GLB are written with the same up axis, "y" by default ((x, y, z)_world -> (x, z, -y)_file, so the
object stands as in the rendered videos), or "z" (world coordinates unchanged). The OBJ records it in a
`# up_axis` comment and the GLB in `asset.extras.up_axis`; `load_world_mesh` reads either back into the world.
"""
from __future__ import annotations

import io
import json
import os
import struct
from typing import Optional

import numpy as np
import trimesh
from PIL import Image

# z-up world (docs/architecture.md §3) -> glTF's y-up: (x, y, z) -> (x, z, -y)
Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
UP_AXES = ("y", "z")


def world_to_file(up_axis: str) -> np.ndarray:
    """(4,4) transform from the z-up world to a file written with `up_axis` ("y" or "z")."""
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {UP_AXES}, got '{up_axis}'.")
    return Z_UP_TO_Y_UP if up_axis == "y" else np.eye(4)


def _to_file_frame(up_axis: str, vertices: np.ndarray, normals: Optional[np.ndarray]
                   ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    rotation = world_to_file(up_axis)[:3, :3]
    vertices = vertices @ rotation.T
    return vertices, (None if normals is None else normals @ rotation.T)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fp:
        fp.write(data)
    os.replace(tmp, path)


def texture_to_uint8(texture: np.ndarray) -> np.ndarray:
    return (np.clip(texture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_textured_obj(out_dir: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
                       name: str = "model", texture_name: str = "texture_kd.png",
                       normals: Optional[np.ndarray] = None, up_axis: str = "y") -> list[str]:
    """`name`.obj + `name`.mtl + `texture_name` (diffuse map). World-frame vertices (V,3), faces (F,3),
    uv (V,2), optional unit vertex normals (V,3); vertex i has uv i (seams already split)."""
    vertices, normals = _to_file_frame(up_axis, vertices, normals)
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
    out.write(f"# {len(vertices)} vertices, {len(faces)} faces\n# up_axis {up_axis}\n"
              f"mtllib {name}.mtl\nusemtl material_0\n")
    np.savetxt(out, vertices, fmt="v %.6f %.6f %.6f")
    np.savetxt(out, uv, fmt="vt %.6f %.6f")
    f1 = faces + 1
    if normals is None:
        np.savetxt(out, np.repeat(f1, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(out, normals, fmt="vn %.5f %.5f %.5f")
        np.savetxt(out, np.repeat(f1, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    obj_path = os.path.join(out_dir, f"{name}.obj")
    _atomic_write_bytes(obj_path, out.getvalue().encode())
    return [obj_path, mtl_path, image_path]


def textured_trimesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
                     normals: Optional[np.ndarray] = None) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(texture_to_uint8(texture)), metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices, faces, vertex_normals=normals, visual=visual, process=False)


def _glb_chunks(data: bytes) -> tuple[dict, bytes]:
    magic, _version, _length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF":
        raise ValueError("not a binary glTF file (no 'glTF' magic)")
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    if json_type != b"JSON":
        raise ValueError("binary glTF without a leading JSON chunk")
    document = json.loads(data[20:20 + json_length])
    return document, data[20 + json_length:]


def _glb_with_document(document: dict, rest: bytes) -> bytes:
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)  # the JSON chunk is padded with spaces to 4 bytes
    body = struct.pack("<I4s", len(text), b"JSON") + text + rest
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def write_glb(path: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
              normals: Optional[np.ndarray] = None, up_axis: str = "y", unlit: bool = False) -> str:
    """Binary glTF with a base-colour texture and optional smooth vertex normals. `unlit` marks the material
    KHR_materials_unlit, so viewers show the texture (which already holds the shading) without lighting it
    again."""
    vertices, normals = _to_file_frame(up_axis, vertices, normals)
    mesh = textured_trimesh(vertices, faces, uv, texture, normals)
    document, rest = _glb_chunks(mesh.export(file_type="glb", include_normals=normals is not None))
    document.setdefault("asset", {}).setdefault("extras", {})["up_axis"] = up_axis
    if unlit:
        for material in document.get("materials", []):
            material.setdefault("extensions", {})["KHR_materials_unlit"] = {}
        used = document.setdefault("extensionsUsed", [])
        if "KHR_materials_unlit" not in used:
            used.append("KHR_materials_unlit")
    _atomic_write_bytes(path, _glb_with_document(document, rest))
    return path


def file_up_axis(path: str) -> str:
    """The up axis an exported OBJ/GLB was written with ("y" for files that do not say: glTF's own rule)."""
    if path.lower().endswith(".glb"):
        with open(path, "rb") as fp:
            document, _ = _glb_chunks(fp.read())
        return document.get("asset", {}).get("extras", {}).get("up_axis", "y")
    with open(path, "r", errors="replace") as fp:
        for line in fp:
            if line.startswith("# up_axis "):
                return line.split()[2]
            if not line.startswith("#"):
                break
    return "z"  # OBJs written before the marker existed were in world coordinates


def load_world_mesh(path: str) -> trimesh.Trimesh:
    """An exported OBJ/GLB as a single trimesh in the z-up world frame (undoing the file's up axis)."""
    mesh = trimesh.load(path, force="mesh", process=False)
    mesh.apply_transform(np.linalg.inv(world_to_file(file_up_axis(path))))
    return mesh


def write_vertex_color_ply(path: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> str:
    """Binary PLY with per-vertex RGB colours in [0,1]."""
    rgba = np.concatenate([texture_to_uint8(colors), np.full((len(colors), 1), 255, np.uint8)], axis=-1)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False)
    _atomic_write_bytes(path, mesh.export(file_type="ply"))
    return path
