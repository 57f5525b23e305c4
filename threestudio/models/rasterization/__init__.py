"""A differentiable triangle rasterizer with nvdiffrast's four operations and tensor conventions.

    rast = r.rasterize(pos_clip (B, V, 4), tri (F, 3) int32, (H, W))   # (B, H, W, 4): u, v, z/w, id + 1
    feat = r.interpolate(attr (V, C) | (B, V, C), rast, tri)           # (B, H, W, C)
    col  = r.texture(tex (B, Ht, Wt, C), uv (B, H, W, 2))              # bilinear
    col  = r.antialias(col, rast, pos_clip, tri)                       # silhouette gradients to pos

Backends, chosen at construction (`backend="auto"`): "nvdiffrast" on CUDA when importable (imported
lazily), else "cpu" (the C++/OpenMP kernel, built on first use) and, if that cannot be built, "torch"
(the pure-PyTorch reference). Image row 0 is NDC y = -1, as in nvdiffrast: renderers that want row 0 at
the top flip y in their projection.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import Tensor

from threestudio.models.rasterization import cpu_kernel, reference
from threestudio.models.rasterization.reference import construct_topology
from threestudio.utils.misc import cuda_package_available

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "nvdiffrast", "cpu", "torch")

__all__ = ["DifferentiableRasterizer", "available_backends", "construct_topology", "BACKENDS"]


def available_backends() -> dict[str, Any]:
    """{"nvdiffrast": bool, "cpu": bool, "torch": True, "cpu_error": str | None} (builds the CPU kernel)."""
    cpu_ok = cpu_kernel.load_kernel() is not None
    return {"nvdiffrast": cuda_package_available("nvdiffrast"), "cpu": cpu_ok, "torch": True,
            "cpu_error": None if cpu_ok else cpu_kernel.kernel.error,
            "cpu_build_seconds": cpu_kernel.kernel.build_seconds}


def resolve_backend(backend: str, device: Optional[torch.device] = None) -> str:
    """The backend "auto" means on this device; errors name what is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown rasterizer backend '{backend}'; choose from {BACKENDS}.")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if backend == "auto":
        if on_cuda:
            if cuda_package_available("nvdiffrast"):
                return "nvdiffrast"
            logger.warning("nvdiffrast is not importable: rasterizing CUDA tensors with the pure-PyTorch "
                           "reference (slow). Install nvdiffrast for GPU rendering.")
            return "torch"
        return "cpu" if cpu_kernel.load_kernel() is not None else "torch"
    if backend == "nvdiffrast" and not cuda_package_available("nvdiffrast"):
        raise ValueError("rasterizer backend 'nvdiffrast' needs CUDA and the nvdiffrast package.")
    if backend == "cpu" and cpu_kernel.load_kernel() is None:
        raise ValueError(f"rasterizer backend 'cpu': the kernel did not build ({cpu_kernel.kernel.error}).")
    return backend


class DifferentiableRasterizer:
    """One backend's `rasterize`, `interpolate`, `texture` and `antialias` (see the module docstring)."""

    def __init__(self, backend: str = "auto", device: Optional[torch.device] = None) -> None:
        self.backend = resolve_backend(backend, device)
        self._lib = cpu_kernel.load_kernel() if self.backend == "cpu" else None
        self._ctx = None
        if self.backend == "nvdiffrast":
            import nvdiffrast.torch as dr

            self._dr = dr
            self._ctx = dr.RasterizeCudaContext(device=device)

    @staticmethod
    def _check(pos: Tensor, tri: Tensor) -> None:
        if pos.dim() != 3 or pos.shape[-1] != 4:
            raise ValueError(f"pos must be clip-space positions (B, V, 4), got {tuple(pos.shape)}.")
        if tri.dim() != 2 or tri.shape[-1] != 3 or tri.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tri must be an integer tensor (F, 3), got {tuple(tri.shape)} {tri.dtype}.")

    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        self._check(pos, tri)
        height, width = int(resolution[0]), int(resolution[1])
        if self.backend == "nvdiffrast":
            rast, _ = self._dr.rasterize(self._ctx, pos.float().contiguous(), tri.to(torch.int32).contiguous(),
                                         resolution=[height, width], grad_db=False)
            return rast
        if self.backend == "cpu":
            return cpu_kernel.rasterize(self._lib, pos, tri, (height, width))
        return reference.rasterize(pos, tri, (height, width))

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        if self.backend == "nvdiffrast":
            out, _ = self._dr.interpolate(attr.float().contiguous(), rast, tri.to(torch.int32).contiguous())
            return out
        if self.backend == "cpu":
            return cpu_kernel.interpolate(self._lib, attr, rast, tri)
        return reference.interpolate(attr, rast, tri)

    def texture(self, tex: Tensor, uv: Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap") -> Tensor:
        if self.backend == "nvdiffrast":
            return self._dr.texture(tex.float().contiguous(), uv.float().contiguous(), filter_mode=filter_mode,
                                    boundary_mode=boundary_mode)
        return reference.texture(tex, uv, filter_mode, boundary_mode)

    def construct_topology(self, tri: Tensor) -> Any:
        """What `antialias` takes as `topology` for this mesh (reuse it while the faces do not change)."""
        if self.backend == "nvdiffrast":
            return self._dr.antialias_construct_topology_hash(tri.to(torch.int32).contiguous())
        if self.backend == "cpu":
            return cpu_kernel.construct_topology(self._lib, tri)
        return construct_topology(tri)

    def antialias(self, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology: Optional[Tensor] = None,
                  pos_gradient_boost: float = 1.0) -> Tensor:
        """`topology`: nvdiffrast's topology hash on that backend, else `construct_topology(tri)`; built
        when None."""
        if self.backend == "nvdiffrast":
            return self._dr.antialias(color.contiguous(), rast, pos.float().contiguous(),
                                      tri.to(torch.int32).contiguous(), topology_hash=topology,
                                      pos_gradient_boost=pos_gradient_boost)
        if topology is None:
            topology = self.construct_topology(tri)
        if self.backend == "cpu":
            return cpu_kernel.antialias(self._lib, color, rast, pos, tri, topology, pos_gradient_boost)
        return reference.antialias(color, rast, pos, tri, topology, pos_gradient_boost)
