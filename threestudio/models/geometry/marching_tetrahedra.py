"""Differentiable marching tetrahedra on a cubic lattice split into tetrahedra (DMTet's isosurface step).

The lattice has (R + 1)^3 vertices spanning a box; every cube is split into the 6 tetrahedra of its Kuhn
(Freudenthal) triangulation, which is conforming across cubes (all cubes share the main diagonal
direction), so the extracted surface is watertight. The tetrahedra are never stored: only the cubes whose
corners disagree in sign are split, which keeps memory proportional to the surface (R up to 256).

The surface vertex on a sign-changing edge (a, b) is p = (x_a s_b - x_b s_a) / (s_b - s_a), differentiable
in the SDF values s and in the (deformed) vertex positions x. Inside is s < 0; triangles are wound
counter-clockwise seen from outside (normals point outwards), like PyMCubes' meshes here.
Hand-written (the case table is derived below, not copied): no maintained CPU library does this with
autograd.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

# the 6 tetrahedron edges as vertex pairs
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _kuhn_tetrahedra() -> np.ndarray:
    """(6, 4) cube-corner indices (bit 0: +x, bit 1: +y, bit 2: +z) of the Kuhn triangulation, each
    tetrahedron positively oriented (det(v1 - v0, v2 - v0, v3 - v0) > 0)."""
    tets = []
    for perm in itertools.permutations(range(3)):
        corner, path = 0, [0]
        for axis in perm:
            corner |= 1 << axis
            path.append(corner)
        pts = np.array([[(c >> d) & 1 for d in range(3)] for c in path], dtype=np.float64)
        if np.linalg.det(pts[1:] - pts[0]) < 0:
            path[1], path[2] = path[2], path[1]
        tets.append(path)
    return np.array(tets, dtype=np.int64)


def _case_table() -> tuple[np.ndarray, np.ndarray]:
    """For each of the 16 inside-patterns (bit i: vertex i inside) of a positively oriented tetrahedron,
    up to two triangles as edge indices (16, 6) (-1 padded) and their count (16,). Derived geometrically on
    the reference tetrahedron: each triangle is oriented so that its normal points from inside to outside."""
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    mid = np.array([(ref[a] + ref[b]) / 2 for a, b in TET_EDGES])
    edge_of = {frozenset(e): i for i, e in enumerate(TET_EDGES)}
    table = np.full((16, 6), -1, dtype=np.int64)
    count = np.zeros(16, dtype=np.int64)
    for case in range(16):
        inside = [i for i in range(4) if case >> i & 1]
        outside = [i for i in range(4) if not case >> i & 1]
        if not inside or not outside:
            continue
        if len(inside) == 1 or len(outside) == 1:
            lone = inside[0] if len(inside) == 1 else outside[0]
            others = [i for i in range(4) if i != lone]
            tris = [[edge_of[frozenset((lone, o))] for o in others]]
        else:
            (a, b), (c, d) = inside, outside
            ring = [edge_of[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]
            tris = [[ring[0], ring[1], ring[2]], [ring[0], ring[2], ring[3]]]
        direction = ref[outside].mean(0) - ref[inside].mean(0)
        flat = []
        for t in tris:
            p = mid[t]
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), direction) < 0:
                t = [t[0], t[2], t[1]]
            flat += t
        table[case, :len(flat)] = flat
        count[case] = len(tris)
    return table, count


KUHN_TETS = torch.from_numpy(_kuhn_tetrahedra())
_TABLE, _COUNT = (torch.from_numpy(a) for a in _case_table())
_TET_EDGES = torch.tensor(TET_EDGES, dtype=torch.long)


def lattice_vertices(resolution: int, bbox: Tensor) -> Tensor:
    """((R+1)^3, 3) vertex positions of the lattice spanning bbox (2, 3); index = (i * (R+1) + j) * (R+1) + k
    for the vertex at (i, j, k) along (x, y, z)."""
    axes = [torch.linspace(float(bbox[0, d]), float(bbox[1, d]), resolution + 1, device=bbox.device)
            for d in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def surface_tetrahedra(sdf: Tensor, resolution: int) -> Tensor:
    """(T, 4) vertex indices of the tetrahedra of all cubes whose corners do not all have the same sign."""
    n = resolution + 1
    inside = (sdf.detach().view(n, n, n) < 0).to(torch.int16)
    r = resolution
    count = torch.zeros(r, r, r, dtype=torch.int16, device=sdf.device)
    for corner in range(8):
        i, j, k = corner & 1, (corner >> 1) & 1, (corner >> 2) & 1
        count += inside[i:i + r, j:j + r, k:k + r]
    cubes = torch.nonzero((count > 0) & (count < 8))  # (N, 3)
    if cubes.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=sdf.device)
    base = (cubes[:, 0] * n + cubes[:, 1]) * n + cubes[:, 2]
    corner_offset = torch.tensor([((c & 1) * n + ((c >> 1) & 1)) * n + ((c >> 2) & 1) for c in range(8)],
                                 device=sdf.device)
    corners = base[:, None] + corner_offset[None]  # (N, 8)
    return corners[:, KUHN_TETS.to(sdf.device)].reshape(-1, 4)


def marching_tetrahedra(positions: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """Surface of sdf = 0 over the tetrahedra `tets` (T, 4) of vertices `positions` (V, 3) with values `sdf`
    (V,): vertices (M, 3) (differentiable in positions and sdf) and faces (K, 3) int64."""
    device = positions.device
    s = sdf.reshape(-1)
    inside = s.detach() < 0
    occ = inside[tets]  # (T, 4)
    n_in = occ.sum(1)
    tets = tets[(n_in > 0) & (n_in < 4)]
    if tets.shape[0] == 0:
        return positions.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device)
    occ = inside[tets]
    case = (occ.long() * torch.tensor([1, 2, 4, 8], device=device)).sum(1)
    edges = tets[:, _TET_EDGES.to(device)]  # (T, 6, 2)
    lo, hi = torch.minimum(edges[..., 0], edges[..., 1]), torch.maximum(edges[..., 0], edges[..., 1])
    crossing = inside[lo] != inside[hi]
    key = lo * positions.shape[0] + hi
    unique_keys, edge_index = torch.unique(key[crossing], return_inverse=True)
    a, b = unique_keys // positions.shape[0], unique_keys % positions.shape[0]
    sa, sb = s[a][:, None], s[b][:, None]
    vertices = (positions[a] * sb - positions[b] * sa) / (sb - sa)
    # per tet: the surface vertex of each of its 6 edges (-1 where the edge does not cross)
    tet_edge_vertex = torch.full(crossing.shape, -1, dtype=torch.long, device=device)
    tet_edge_vertex[crossing] = edge_index
    table, count = _TABLE.to(device), _COUNT.to(device)
    tri_edges = table[case]  # (T, 6)
    n_tri = count[case]
    one = tri_edges[:, :3]
    two = tri_edges[n_tri == 2, 3:]
    faces = torch.cat([torch.gather(tet_edge_vertex, 1, one),
                       torch.gather(tet_edge_vertex[n_tri == 2], 1, two)], dim=0)
    return vertices, faces
