"""Regularisers of a triangle mesh (the DMTet refinement stage): normal consistency, Laplacian smoothness."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio.models.rasterization.reference import construct_topology


def normal_consistency(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean of 1 - cos(angle) between the normals of the two faces of every interior edge (0: flat)."""
    v = vertices[faces]
    normals = F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    opp = construct_topology(faces).long()
    face = torch.arange(faces.shape[0], device=faces.device)[:, None].expand_as(opp)
    pair = opp > face  # each interior edge once
    if not pair.any():
        return vertices.sum() * 0
    cos = (normals[face[pair]] * normals[opp[pair]]).sum(-1)
    return (1.0 - cos).mean()


def laplacian_smoothness(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared distance of every vertex to the mean of its edge neighbours (uniform Laplacian)."""
    f = faces.long()
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    edges = torch.unique(torch.sort(edges, dim=1).values, dim=0)
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    n = vertices.shape[0]
    total = torch.zeros_like(vertices).index_add(0, src, vertices[dst])
    degree = torch.zeros(n, dtype=vertices.dtype, device=vertices.device).index_add(
        0, src, torch.ones_like(src, dtype=vertices.dtype))
    used = degree > 0
    lap = total[used] / degree[used, None] - vertices[used]
    return (lap ** 2).sum(-1).mean()
