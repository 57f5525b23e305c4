"""Pure-PyTorch reference of the rasterizer: nvdiffrast's `rasterize`, `interpolate`, `texture`, `antialias`.

The semantics (and the formulas, evaluated in float64) are those of threestudio/csrc/rasterize_cpu.cpp,
whose header comment describes them; gradients come from autograd. This path is the specification the
C++ kernel is tested against and the fallback when the kernel cannot be built; it is slow (vectorised
over candidate pixels, not tiled). Hand-written: no maintained CPU library implements these operations.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# search depth for silhouette edges next to background pixels (as kBackgroundDepth in the C++ kernel)
BACKGROUND_DEPTH = 3


def pixel_centers_ndc(size: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """(size,) NDC coordinates of pixel centres: (2 i + 1) / size - 1 (row 0 is y = -1)."""
    return (2.0 * torch.arange(size, dtype=dtype, device=device) + 1.0) / size - 1.0


def _homogeneous(pos: Tensor, tri: Tensor) -> tuple[Tensor, Tensor]:
    """Per-triangle 2-D homogeneous vertices (F, 3, 3) as (x, y, w) and depths z (F, 3), float64."""
    p = pos.double()[tri.long()]  # (F, 3, 4)
    return p[..., [0, 1, 3]], p[..., 2]


def _edge_planes(v: Tensor) -> Tensor:
    """c_i = v_j x v_k for (i, j, k) cyclic: (F, 3, 3); the edge functions are e_i(q) = c_i . q."""
    return torch.stack([torch.cross(v[:, 1], v[:, 2], dim=-1), torch.cross(v[:, 2], v[:, 0], dim=-1),
                        torch.cross(v[:, 0], v[:, 1], dim=-1)], dim=1)


def _candidates(v: Tensor, valid: Tensor, height: int, width: int, max_candidates: int = 1 << 22):
    """Yield (face ids (N,), px (N,), py (N,)) for every pixel in each valid triangle's bounding box."""
    sx = (v[..., 0] / v[..., 2] + 1.0) * 0.5 * width - 0.5
    sy = (v[..., 1] / v[..., 2] + 1.0) * 0.5 * height - 0.5
    x0 = sx.min(dim=1).values.floor().clamp(0, width - 1).long()
    x1 = sx.max(dim=1).values.ceil().clamp(0, width - 1).long()
    y0 = sy.min(dim=1).values.floor().clamp(0, height - 1).long()
    y1 = sy.max(dim=1).values.ceil().clamp(0, height - 1).long()
    on_screen = (sx.max(dim=1).values >= 0) & (sy.max(dim=1).values >= 0) & \
        (sx.min(dim=1).values <= width - 1) & (sy.min(dim=1).values <= height - 1)
    ids = torch.nonzero(valid & on_screen).squeeze(1)
    extent = torch.maximum(x1 - x0 + 1, y1 - y0 + 1)[ids]
    bucket = torch.ceil(torch.log2(extent.double().clamp(min=1))).long()
    for b in torch.unique(bucket).tolist():
        box = 1 << int(b)
        oy, ox = torch.meshgrid(torch.arange(box), torch.arange(box), indexing="ij")
        ox, oy = ox.reshape(-1), oy.reshape(-1)
        group = ids[bucket == b]
        step = max(1, max_candidates // (box * box))
        for start in range(0, len(group), step):
            f = group[start:start + step]
            px = (x0[f][:, None] + ox[None]).reshape(-1)
            py = (y0[f][:, None] + oy[None]).reshape(-1)
            ff = f[:, None].expand(-1, box * box).reshape(-1)
            keep = (px <= x1[ff]) & (py <= y1[ff])
            yield ff[keep], px[keep], py[keep]


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
    """pos (B, V, 4) clip space, tri (F, 3) int -> rast (B, H, W, 4) = (u, v, z/w, id + 1), differentiable
    in pos through u, v and z/w."""
    height, width = resolution
    out = []
    for b in range(pos.shape[0]):
        with torch.no_grad():
            v, z = _homogeneous(pos[b], tri)
            c = _edge_planes(v)
            det = (v[:, 0] * c[:, 0]).sum(-1)
            valid = (v[..., 2] > 0).all(dim=1) & (det != 0) & torch.isfinite(det)
            zp = (z[..., None] * c).sum(1)
            wp = (v[..., 2:3] * c).sum(1)
            qx_all, qy_all = pixel_centers_ndc(width), pixel_centers_ndc(height)
            best_pix, best_f, best_d = [], [], []
            for f, px, py in _candidates(v, valid, height, width):
                q = torch.stack([qx_all[px], qy_all[py], torch.ones_like(qx_all[px])], dim=-1)  # (N, 3)
                e = (c[f] * q[:, None]).sum(-1)  # (N, 3)
                s = e.sum(-1)
                inside = torch.where(s > 0, (e >= 0).all(-1), (e <= 0).all(-1)) & (s != 0)
                den = (wp[f] * q).sum(-1)
                depth = (zp[f] * q).sum(-1) / torch.where(den == 0, torch.ones_like(den), den)
                keep = inside & (den != 0) & (depth >= -1) & (depth <= 1)
                best_pix.append(py[keep] * width + px[keep])
                best_f.append(f[keep])
                best_d.append(depth[keep])
            if best_pix:
                pix, fid, dep = torch.cat(best_pix), torch.cat(best_f), torch.cat(best_d)
            else:
                pix = fid = torch.zeros(0, dtype=torch.long)
                dep = torch.zeros(0, dtype=torch.float64)
            # z-buffer: per pixel the smallest depth, ties to the lowest triangle id
            order = torch.sort(fid, stable=True).indices
            order = order[torch.sort(dep[order], stable=True).indices]
            order = order[torch.sort(pix[order], stable=True).indices]
            pix, fid = pix[order], fid[order]
            first = torch.ones_like(pix, dtype=torch.bool)
            first[1:] = pix[1:] != pix[:-1]
            pix, fid = pix[first], fid[first]
        # differentiable values of the winners
        v, z = _homogeneous(pos[b], tri[fid])
        c = _edge_planes(v)
        q = torch.stack([pixel_centers_ndc(width)[pix % width], pixel_centers_ndc(height)[pix // width],
                         torch.ones(len(pix), dtype=torch.float64)], dim=-1)
        e = (c * q[:, None]).sum(-1)
        s = e.sum(-1)
        depth = ((z[..., None] * c).sum(1) * q).sum(-1) / ((v[..., 2:3] * c).sum(1) * q).sum(-1)
        values = torch.stack([e[:, 0] / s, e[:, 1] / s, depth, (fid + 1).double()], dim=-1).float()
        rast = torch.zeros(height * width, 4, dtype=torch.float32, device=pos.device)
        out.append(rast.index_put((pix,), values).view(height, width, 4))
    return torch.stack(out)


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    """Barycentric interpolation of vertex attributes attr (V, C) or (B|1, V, C) -> (B, H, W, C); 0 where no
    triangle. Differentiable in attr and in the barycentrics of rast."""
    if attr.dim() == 2:
        attr = attr[None]
    batch, height, width, _ = rast.shape
    n_ch = attr.shape[-1]
    flat = rast.reshape(batch, -1, 4)
    fid = flat[..., 3].detach().long() - 1
    out = torch.zeros(batch, height * width, n_ch, dtype=attr.dtype, device=attr.device)
    for b in range(batch):
        covered = torch.nonzero(fid[b] >= 0).squeeze(1)
        idx = tri.long()[fid[b, covered]]  # (N, 3)
        a = attr[b if attr.shape[0] > 1 else 0]
        u, v = flat[b, covered, 0:1], flat[b, covered, 1:2]
        a0, a1, a2 = a[idx[:, 0]], a[idx[:, 1]], a[idx[:, 2]]
        out[b] = out[b].index_put((covered,), a2 + u * (a0 - a2) + v * (a1 - a2))
    return out.view(batch, height, width, n_ch)


def texture(tex: Tensor, uv: Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap") -> Tensor:
    """Bilinear (or nearest) lookup of tex (B|1, Ht, Wt, C) at uv (B, H, W, 2) -> (B, H, W, C).

    uv (0, 0) is the corner of texel row 0, column 0 (u along the width, v along the height), as nvdiffrast;
    `boundary_mode` is "wrap" (repeat) or "clamp". Uses torch's grid_sample.
    """
    if filter_mode not in ("linear", "nearest", "auto"):
        raise ValueError(f"filter_mode must be linear, nearest or auto, got '{filter_mode}'.")
    if boundary_mode not in ("wrap", "clamp"):
        raise ValueError(f"boundary_mode must be wrap or clamp, got '{boundary_mode}'.")
    batch = uv.shape[0]
    if tex.shape[0] == 1 and batch > 1:
        tex = tex.expand(batch, -1, -1, -1)
    image = tex.permute(0, 3, 1, 2)
    th, tw = image.shape[-2:]
    mode = "nearest" if filter_mode == "nearest" else "bilinear"
    if boundary_mode == "wrap":
        # one texel of circular padding, then sample the padded image at the wrapped coordinates
        image = F.pad(image, (1, 1, 1, 1), mode="circular")
        uv = uv - torch.floor(uv)
        gx = (2.0 * (uv[..., 0] * tw + 1.0)) / (tw + 2) - 1.0
        gy = (2.0 * (uv[..., 1] * th + 1.0)) / (th + 2) - 1.0
        grid = torch.stack([gx, gy], dim=-1)
    else:
        grid = uv * 2.0 - 1.0
    out = F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def construct_topology(tri: Tensor) -> Tensor:
    """opp (F, 3) int32: the triangle across the edge opposite vertex k of each triangle, -1 on boundary and
    non-manifold edges (nvdiffrast's topology hash, as a table)."""
    n_faces = tri.shape[0]
    t = tri.long()
    a = torch.cat([t[:, 1], t[:, 2], t[:, 0]])  # edge k joins vertices (k+1, k+2)
    b = torch.cat([t[:, 2], t[:, 0], t[:, 1]])
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    key = lo * (int(t.max()) + 1 if n_faces else 1) + hi
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    _, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    opp = torch.full((3 * n_faces,), -1, dtype=torch.long, device=tri.device)
    pairs = starts[counts == 2]
    e0, e1 = order[pairs], order[pairs + 1]
    face = torch.arange(3 * n_faces, device=tri.device) % max(n_faces, 1)
    opp[e0] = face[e1]
    opp[e1] = face[e0]
    return opp.view(3, n_faces).t().contiguous().to(torch.int32)


def _facing(pos: Tensor, tri: Tensor) -> Tensor:
    v, _ = _homogeneous(pos, tri)
    return (v[:, 0] * torch.cross(v[:, 1], v[:, 2], dim=-1)).sum(-1) > 0


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology: Optional[Tensor] = None,
              pos_gradient_boost: float = 1.0) -> Tensor:
    """Blend colours across silhouette edges (see the C++ header): differentiable in color and pos."""
    if topology is None:
        topology = construct_topology(tri)
    batch, height, width, n_ch = color.shape
    opp = topology.long()
    t = tri.long()
    out = []
    for b in range(batch):
        rb = rast[b].detach()
        ids = rb[..., 3].long()
        depth = rb[..., 2]
        p = pos[b]
        front = _facing(p.detach(), tri)
        neighbour_front = torch.where(opp >= 0, front[opp.clamp(min=0)], ~front[:, None].expand(-1, 3))
        silhouette = (opp < 0) | (neighbour_front != front[:, None])  # (F, 3)
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        deltas = torch.zeros(height * width, n_ch, dtype=color.dtype, device=color.device)
        flat_color = color[b].reshape(-1, n_ch)
        for horizontal in (True, False):
            if horizontal:
                py, px, ny, nx = yy[:, :-1], xx[:, :-1], yy[:, 1:], xx[:, 1:]
            else:
                py, px, ny, nx = yy[:-1], xx[:-1], yy[1:], xx[1:]
            py, px, ny, nx = (a.reshape(-1) for a in (py, px, ny, nx))
            idp, idn = ids[py, px], ids[ny, nx]
            dp, dn = depth[py, px], depth[ny, nx]
            p_occ = (idn == 0) | ((idp != 0) & ((dp < dn) | ((dp == dn) & (idp < idn))))
            sel = idp != idn
            py, px, ny, nx, p_occ = py[sel], px[sel], ny[sel], nx[sel], p_occ[sel]
            ox, oy = torch.where(p_occ, px, nx), torch.where(p_occ, py, ny)
            xx2, xy2 = torch.where(p_occ, nx, px), torch.where(p_occ, ny, py)
            f = ids[oy, ox] - 1
            found = torch.zeros_like(f, dtype=torch.bool)
            frac = torch.zeros(len(f), dtype=torch.float64)
            # candidates: the occluder's triangle, then same-facing triangles reached through edge neighbours,
            # breadth first: 1 step, or BACKGROUND_DEPTH steps next to background (see find_crossing in C++)
            background = ids[xy2, xx2] == 0
            levels = [f[:, None]]
            for level in range(BACKGROUND_DEPTH):
                parent = levels[-1]
                child = torch.where(parent[..., None] >= 0, opp[parent.clamp(min=0)], -1)
                child = torch.where((child >= 0) & (front[child.clamp(min=0)] == front[f][:, None, None]), child, -1)
                if level >= 1:
                    child = torch.where(background[:, None, None], child, -1)
                levels.append(child.reshape(len(f), -1))
            candidates = torch.cat(levels, dim=1)
            for c in range(candidates.shape[1]):
                g = candidates[:, c]
                usable = g >= 0
                g = g.clamp(min=0)
                for k in range(3):
                    pa = p[t[g, (k + 1) % 3]].double()
                    pb = p[t[g, (k + 2) % 3]].double()
                    ax = (pa[:, 0] / pa[:, 3] + 1.0) * 0.5 * width - 0.5
                    ay = (pa[:, 1] / pa[:, 3] + 1.0) * 0.5 * height - 0.5
                    bx = (pb[:, 0] / pb[:, 3] + 1.0) * 0.5 * width - 0.5
                    by = (pb[:, 1] / pb[:, 3] + 1.0) * 0.5 * height - 0.5
                    a_s, a_t, b_s, b_t = (ax, ay, bx, by) if horizontal else (ay, ax, by, bx)
                    line = (oy if horizontal else ox).double()
                    start = (ox if horizontal else oy).double()
                    direction = ((xx2 - ox) if horizontal else (xy2 - oy)).double()
                    dt = b_t - a_t
                    safe_dt = torch.where(dt == 0, torch.ones_like(dt), dt)
                    tt = (line - a_t) / safe_dt
                    cs = a_s + tt * (b_s - a_s)
                    fk = (cs - start) * direction
                    steep = dt.abs() >= (b_s - a_s).abs() if horizontal else dt.abs() > (b_s - a_s).abs()
                    ok = usable & silhouette[g, k] & steep & (dt != 0) & (tt >= 0) & (tt <= 1) & (fk >= 0) & \
                        (fk <= 1) & ~found
                    frac = torch.where(ok, fk, frac)
                    found = found | ok
            if pos_gradient_boost != 1.0:
                frac = frac.detach() + pos_gradient_boost * (frac - frac.detach())
            io = oy * width + ox
            ix = xy2 * width + xx2
            cut_occluder = frac < 0.5
            weight = torch.where(cut_occluder, 0.5 - frac, frac - 0.5)
            use = found & (weight > 0)
            m = torch.where(cut_occluder, io, ix)[use]
            other = torch.where(cut_occluder, ix, io)[use]
            w = weight[use].to(color.dtype)[:, None]
            deltas = deltas.index_add(0, m, w * (flat_color[other] - flat_color[m]))
        out.append((flat_color + deltas).view(height, width, n_ch))
    return torch.stack(out)
