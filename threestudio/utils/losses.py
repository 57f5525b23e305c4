"""Every loss term of the systems, in one place.

Image-space terms take renderer outputs of shape (B, H, W, C); sample-space terms take the packed
samples of a training render, (N, C) sorted by ray (see `NeRFVolumeRenderer`). Every term is finite
when no ray hits anything (no samples, zero opacity): it is then zero, still attached to the graph.

`regularizer_losses` computes the geometry regularisers a system asks for by name
(`system.loss.lambda_<name>`), checking first that the renderer output has what each needs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio.utils.config import ConfigError
from threestudio.utils.ops import exclusive_cumsum_along_rays

# The one clamp of opacities before a logarithm (threestudio's value): log-based terms see opacity in
# [OPACITY_EPS, 1 - OPACITY_EPS].
OPACITY_EPS = 1e-3

PHOTOMETRIC_LOSSES = ("mse", "l1", "smooth_l1")


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1] of any equal shape."""
    mse = F.mse_loss(pred.clamp(0, 1).float(), target.float()).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def clamp_opacity(opacity: Tensor) -> Tensor:
    return opacity.clamp(OPACITY_EPS, 1.0 - OPACITY_EPS)


def photometric_loss(pred: Tensor, target: Tensor, kind: str = "mse", weight: Optional[Tensor] = None) -> Tensor:
    """Per-pixel error of (B, H, W, C) images averaged over pixels, or over pixels weighted by a
    (B, H, W, 1) `weight` (0 everywhere gives 0). `kind`: mse | l1 | smooth_l1 (beta 0.1)."""
    if kind == "mse":
        err = (pred - target) ** 2
    elif kind == "l1":
        err = (pred - target).abs()
    elif kind == "smooth_l1":
        err = F.smooth_l1_loss(pred, target, reduction="none", beta=0.1)
    else:
        raise ValueError(f"photometric loss must be one of {PHOTOMETRIC_LOSSES}, got '{kind}'.")
    if weight is None:
        return err.mean()
    return (err * weight).sum() / (weight.sum() * err.shape[-1]).clamp_min(1.0)


def mask_bce_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of the (B, H, W, 1) opacity against a mask in [0, 1]."""
    return F.binary_cross_entropy(clamp_opacity(opacity), mask.clamp(0, 1))


def sparsity_loss(opacity: Tensor) -> Tensor:
    """mean sqrt(opacity² + 0.01): favours empty pixels (threestudio's `sparsity`)."""
    return (opacity ** 2 + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of the opacity: pushes every pixel towards fully empty or fully opaque."""
    p = clamp_opacity(opacity)
    return F.binary_cross_entropy(p, p)


def orient_loss(weights: Tensor, normal: Tensor, t_dirs: Tensor, opacity: Tensor) -> Tensor:
    """DreamFusion's orientation loss: sum_i sg(w_i) max(0, n_i · d_i)² / #rays that hit something.

    weights (N, 1), normal and t_dirs (N, 3) per sample; opacity (B, H, W, 1) counts the rays."""
    facing = (normal * t_dirs).sum(dim=-1, keepdim=True).clamp_min(0.0)
    n_hit = (opacity > 0).sum().clamp_min(1)
    return (weights.detach() * facing ** 2).sum() / n_hit


def z_variance_loss(z_variance: Tensor, opacity: Tensor) -> Tensor:
    """HiFA's depth variance averaged over opaque rays (opacity > 0.5): one sharp surface per ray."""
    mask = opacity > 0.5
    if not mask.any():
        return z_variance.sum() * 0.0
    return z_variance[mask].mean()


def distortion_loss(weights: Tensor, t_mid: Tensor, t_intervals: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Mip-NeRF 360 distortion loss on packed samples (sorted by ray, then by t), averaged over rays:
    sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i² δ_i, in O(N) with per-ray prefix sums.

    weights, t_mid, t_intervals: (N,) or (N, 1); ray_indices (N,). The prefix sums run in float64, as
    the renderer's transmittance does (float32 is ~2% off at 4096 rays × 96 samples)."""
    w, t, d = weights.reshape(-1), t_mid.reshape(-1), t_intervals.reshape(-1)
    if w.numel() == 0:
        return w.sum()
    # for sorted t: sum_{i,j} w_i w_j |t_i - t_j| = 2 sum_i w_i (t_i W_<i - (wt)_<i)
    w64, t64 = w.to(torch.float64), t.to(torch.float64)
    w_before = exclusive_cumsum_along_rays(w64, ray_indices, n_rays)
    wt_before = exclusive_cumsum_along_rays(w64 * t64, ray_indices, n_rays)
    inter = 2.0 * (w64 * (t64 * w_before - wt_before)).sum()
    intra = (w64 * w64 * d.to(torch.float64)).sum() / 3.0
    return ((inter + intra) / max(n_rays, 1)).to(w.dtype)


def normal_smooth_2d_loss(comp_normal: Tensor) -> Tensor:
    """Squared differences of neighbouring pixels of the (B, H, W, 3) rendered normal image."""
    n = comp_normal
    return (n[:, 1:] - n[:, :-1]).square().mean() + (n[:, :, 1:] - n[:, :, :-1]).square().mean()


def normal_smooth_3d_loss(normal: Tensor, normal_perturb: Tensor) -> Tensor:
    """L1 between the (N, 3) normals at the samples and at slightly perturbed points (0 without samples)."""
    if normal.numel() == 0:
        return (normal - normal_perturb).sum()
    return (normal - normal_perturb).abs().mean()


def normal_consistency(vertices: Tensor, faces: Tensor, crease_deg: Optional[float] = None) -> Tensor:
    """Mean over the interior edges of a penalty on x = 1 - cos(angle between the two faces' normals).

    `crease_deg` None: x itself (threestudio's term). A crease angle c: the robust (Geman-McClure) x / (x + s),
    s = 1 - cos(c). x grows as the square of the angle, so the plain term barely pulls on small bends (the
    noise of a fitted surface) and pulls hardest on real edges, rounding them; the robust one is steepest at
    small bends and flat beyond c, so it flattens noise and leaves the creases sharper than c alone."""
    from threestudio.models.rasterization.reference import construct_topology

    v = vertices[faces]
    normals = F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    opp = construct_topology(faces).long()
    face = torch.arange(faces.shape[0], device=faces.device)[:, None].expand_as(opp)
    pair = opp > face  # each interior edge once
    if not pair.any():
        return vertices.sum() * 0
    bend = 1.0 - (normals[face[pair]] * normals[opp[pair]]).sum(-1)
    if crease_deg is None:
        return bend.mean()
    scale = 1.0 - math.cos(math.radians(crease_deg))
    return (bend / (bend + scale)).mean()


def laplacian_smoothness(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared distance of every vertex to the mean of its edge neighbours (uniform Laplacian).

    Neighbours come from both directions of every face edge, so on a closed mesh each counts twice (the
    same mean) and a boundary edge's once; no edge deduplication (torch.unique is the slowest op here)."""
    f = faces.long()
    src = torch.cat([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    dst = torch.cat([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    n = vertices.shape[0]
    total = torch.zeros_like(vertices).index_add(0, src, vertices[dst])
    degree = torch.zeros(n, dtype=vertices.dtype, device=vertices.device).index_add(
        0, src, torch.ones_like(src, dtype=vertices.dtype))
    used = degree > 0
    if not used.any():  # no faces (an empty surface): zero, with a gradient path
        return vertices.sum() * 0
    lap = total[used] / degree[used, None] - vertices[used]
    return (lap ** 2).sum(-1).mean()


def _angle_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 180)


# settings of the terms that may sit in system.loss next to the lambda_<name> weights: key -> (check, what)
LOSS_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "normal_consistency_crease_deg": (_angle_or_null, "an angle in (0, 180) degrees or null"),
}

# name -> (renderer outputs it needs, what to set when they are missing, the term of (outputs, system.loss))
_Term = tuple[tuple[str, ...], str, Callable[[dict[str, Tensor], Mapping[str, Any]], Tensor]]
REGULARIZERS: dict[str, _Term] = {
    "sparsity": (("opacity",), "", lambda o, _: sparsity_loss(o["opacity"])),
    "opaque": (("opacity",), "", lambda o, _: opaque_loss(o["opacity"])),
    "orient": (("normal", "weights", "t_dirs", "opacity"),
               "per-sample normals: set system.geometry.normal_type (e.g. 'analytic') and use a material "
               "that needs normals, or set system.renderer.return_comp_normal: true",
               lambda o, _: orient_loss(o["weights"], o["normal"], o["t_dirs"], o["opacity"])),
    "z_variance": (("z_variance", "opacity"), "a renderer that outputs z_variance",
                   lambda o, _: z_variance_loss(o["z_variance"], o["opacity"])),
    "distortion": (("weights", "t_points", "t_intervals", "ray_indices", "opacity"),
                   "the packed samples of a volume renderer in training mode",
                   lambda o, _: distortion_loss(o["weights"], o["t_points"], o["t_intervals"], o["ray_indices"],
                                                o["opacity"].numel())),
    "normal_smooth": (("comp_normal",), "system.renderer.return_comp_normal: true",
                      lambda o, _: normal_smooth_2d_loss(o["comp_normal"])),
    "3d_normal_smooth": (("normal", "normal_perturb"), "system.renderer.return_normal_perturb: true",
                         lambda o, _: normal_smooth_3d_loss(o["normal"], o["normal_perturb"])),
    "normal_consistency": (("mesh",), "a mesh renderer: nvdiff-rasterizer with tetrahedra-sdf-grid",
                           lambda o, options: normal_consistency(
                               o["mesh"].vertices, o["mesh"].faces, options.get("normal_consistency_crease_deg"))),
    "laplacian_smoothness": (("mesh",), "a mesh renderer: nvdiff-rasterizer with tetrahedra-sdf-grid",
                             lambda o, _: laplacian_smoothness(o["mesh"].vertices, o["mesh"].faces)),
}


def regularizer_losses(out: dict[str, Tensor], active: Callable[[str], bool],
                       options: Optional[Mapping[str, Any]] = None) -> dict[str, Tensor]:
    """The regularisers of REGULARIZERS for which `active(name)` is true, computed on renderer output `out`
    with the settings in `options` (system.loss; see LOSS_OPTIONS).

    Raises ConfigError naming `system.loss.lambda_<name>` when `out` lacks what an active term needs."""
    losses: dict[str, Tensor] = {}
    for name, (needs, hint, term) in REGULARIZERS.items():
        if not active(name):
            continue
        missing = [key for key in needs if key not in out]
        if missing:
            raise ConfigError(
                f"system.loss.lambda_{name} > 0 needs '{missing[0]}' in the renderer output ({hint or 'opacity'}); "
                f"provide it or set lambda_{name} to 0."
            )
        losses[name] = term(out, options or {})
    return losses
