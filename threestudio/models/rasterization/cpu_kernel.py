"""The C++/OpenMP CPU rasterizer kernel (threestudio/csrc/rasterize_cpu.cpp): lazy build, autograd functions.

Built on first use like the hash-grid kernel (threestudio.utils.cpu_kernel_build). If the build fails,
`load_kernel()` returns None with a warning and the rasterizer uses the pure-PyTorch reference.
`rasterize`, `interpolate` and `antialias` run in the kernel; `texture` is torch's grid_sample.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from threestudio.utils.cpu_kernel_build import LazyKernel, compile_cpu_kernel

_EXTENSION_NAME = "threestudio_rasterize_cpu"
_ABI_VERSION = 5


_p, _i64, _i32, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


def _compile() -> ctypes.CDLL:
    lib = compile_cpu_kernel(_EXTENSION_NAME, "rasterize_cpu.cpp", "rs_abi_version", _ABI_VERSION)
    lib.rs_rasterize_forward.argtypes = [_p, _i64, _i64, _p, _i64, _i32, _i32, _p, _i32]
    lib.rs_rasterize_backward.argtypes = [_p, _i64, _i64, _p, _i64, _i32, _i32, _p, _p, _p, _p, _i32]
    lib.rs_antialias_forward.argtypes = [_p, _i64, _i32, _i32, _i32, _p, _p, _i64, _p, _i64, _p, _p, _i32]
    lib.rs_antialias_backward.argtypes = [_p, _i64, _i32, _i32, _i32, _p, _p, _i64, _p, _i64, _p, _p, _p, _p,
                                          _p, _f32, _i32]
    lib.rs_interpolate_forward.argtypes = [_p, _i64, _i64, _i32, _p, _i64, _i32, _i32, _p, _p, _i32]
    lib.rs_interpolate_backward.argtypes = [_p, _i64, _i64, _i32, _p, _i64, _i32, _i32, _p, _p, _p, _p, _p, _i32]
    lib.rs_construct_topology.argtypes = [_p, _i64, _i64, _p]
    for fn in (lib.rs_construct_topology, lib.rs_rasterize_forward, lib.rs_rasterize_backward, lib.rs_antialias_forward,
               lib.rs_antialias_backward, lib.rs_interpolate_forward, lib.rs_interpolate_backward):
        fn.restype = _i32
    return lib


kernel = LazyKernel("CPU rasterizer kernel", lambda: _compile(), "the slow pure-PyTorch rasterizer")

# the module's entry points; LazyKernel holds the build state (`kernel.error`, `kernel.build_seconds`)
load_kernel = kernel.load


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _cpu_f32(t: Tensor, name: str) -> Tensor:
    if t.device.type != "cpu":
        raise ValueError(f"The CPU rasterizer needs CPU tensors; {name} is on {t.device}.")
    return t.detach().to(torch.float32).contiguous()


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pos: Tensor, tri: Tensor, height: int, width: int, lib: ctypes.CDLL) -> Tensor:
        pos_c = _cpu_f32(pos, "pos")
        tri_c = tri.to(torch.int32).contiguous()
        batch, n_vert = pos_c.shape[:2]
        rast = torch.empty(batch, height, width, 4, dtype=torch.float32)
        lib.rs_rasterize_forward(pos_c.data_ptr(), batch, n_vert, tri_c.data_ptr(), tri_c.shape[0], height, width,
                                 rast.data_ptr(), _threads())
        ctx.save_for_backward(pos_c, tri_c, rast)
        ctx.lib = lib
        return rast

    @staticmethod
    def backward(ctx, grad_rast: Tensor):
        pos_c, tri_c, rast = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        batch, n_vert = pos_c.shape[:2]
        height, width = rast.shape[1:3]
        nt = _threads()
        grad_pos = torch.empty_like(pos_c)
        scratch = torch.empty(nt * n_vert * 4, dtype=torch.float32)
        g = grad_rast.to(torch.float32).contiguous()
        ctx.lib.rs_rasterize_backward(pos_c.data_ptr(), batch, n_vert, tri_c.data_ptr(), tri_c.shape[0], height,
                                      width, rast.data_ptr(), g.data_ptr(), grad_pos.data_ptr(),
                                      scratch.data_ptr(), nt)
        return grad_pos, None, None, None, None


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology: Tensor, boost: float,
                lib: ctypes.CDLL) -> Tensor:
        color_c = _cpu_f32(color, "color")
        rast_c = _cpu_f32(rast, "rast")
        pos_c = _cpu_f32(pos, "pos")
        tri_c = tri.to(torch.int32).contiguous()
        opp = topology.to(torch.int32).contiguous()
        batch, height, width, n_ch = color_c.shape
        out = torch.empty_like(color_c)
        lib.rs_antialias_forward(color_c.data_ptr(), batch, height, width, n_ch, rast_c.data_ptr(),
                                 pos_c.data_ptr(), pos_c.shape[1], tri_c.data_ptr(), tri_c.shape[0],
                                 opp.data_ptr(), out.data_ptr(), _threads())
        ctx.save_for_backward(color_c, rast_c, pos_c, tri_c, opp)
        ctx.lib, ctx.boost = lib, boost
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        color_c, rast_c, pos_c, tri_c, opp = ctx.saved_tensors
        batch, height, width, n_ch = color_c.shape
        n_vert = pos_c.shape[1]
        nt = _threads()
        grad_color = torch.empty_like(color_c)
        grad_pos = torch.zeros_like(pos_c)
        scratch = torch.empty(nt * n_vert * 4, dtype=torch.float32)
        g = grad_out.to(torch.float32).contiguous()
        ctx.lib.rs_antialias_backward(color_c.data_ptr(), batch, height, width, n_ch, rast_c.data_ptr(),
                                      pos_c.data_ptr(), n_vert, tri_c.data_ptr(), tri_c.shape[0], opp.data_ptr(),
                                      g.data_ptr(), grad_color.data_ptr(), grad_pos.data_ptr(), scratch.data_ptr(),
                                      float(ctx.boost), nt)
        return (grad_color if ctx.needs_input_grad[0] else None, None,
                grad_pos if ctx.needs_input_grad[2] else None, None, None, None, None)


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr: Tensor, rast: Tensor, tri: Tensor, lib: ctypes.CDLL) -> Tensor:
        attr_c = _cpu_f32(attr if attr.dim() == 3 else attr[None], "attr")
        rast_c = _cpu_f32(rast, "rast")
        tri_c = tri.to(torch.int32).contiguous()
        batch, height, width, _ = rast_c.shape
        if attr_c.shape[0] not in (1, batch):
            raise ValueError(f"attr has batch size {attr_c.shape[0]}, the raster {batch}.")
        n_ch = attr_c.shape[-1]
        out = torch.empty(batch, height, width, n_ch, dtype=torch.float32)
        lib.rs_interpolate_forward(attr_c.data_ptr(), attr_c.shape[0], attr_c.shape[1], n_ch, rast_c.data_ptr(),
                                   batch, height, width, tri_c.data_ptr(), out.data_ptr(), _threads())
        ctx.save_for_backward(attr_c, rast_c, tri_c)
        ctx.lib, ctx.attr_dim = lib, attr.dim()
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        attr_c, rast_c, tri_c = ctx.saved_tensors
        want_attr, want_rast = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_attr or want_rast):
            return None, None, None, None
        batch, height, width, _ = rast_c.shape
        nt = _threads()
        grad_attr = torch.empty_like(attr_c) if want_attr else None
        grad_rast = torch.empty_like(rast_c) if want_rast else None
        scratch = torch.empty(nt * attr_c.numel(), dtype=torch.float32) if want_attr else None
        g = grad_out.to(torch.float32).contiguous()
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        ctx.lib.rs_interpolate_backward(attr_c.data_ptr(), attr_c.shape[0], attr_c.shape[1], attr_c.shape[2],
                                        rast_c.data_ptr(), batch, height, width, tri_c.data_ptr(), g.data_ptr(),
                                        ptr(grad_attr), ptr(grad_rast), ptr(scratch), nt)
        if grad_attr is not None and ctx.attr_dim == 2:
            grad_attr = grad_attr[0]
        return grad_attr, grad_rast, None, None


def construct_topology(lib: ctypes.CDLL, tri: Tensor, n_vertices: Optional[int] = None) -> Tensor:
    """opp (F, 3) int32, as reference.construct_topology."""
    tri_c = tri.detach().cpu().to(torch.int32).contiguous()
    n_vertices = int(tri_c.max()) + 1 if n_vertices is None and tri_c.numel() else (n_vertices or 0)
    opp = torch.empty(tri_c.shape[0], 3, dtype=torch.int32)
    lib.rs_construct_topology(tri_c.data_ptr(), tri_c.shape[0], n_vertices, opp.data_ptr())
    return opp


def interpolate(lib: ctypes.CDLL, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    return _Interpolate.apply(attr, rast, tri, lib)


def rasterize(lib: ctypes.CDLL, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
    return _Rasterize.apply(pos, tri, int(resolution[0]), int(resolution[1]), lib)


def antialias(lib: ctypes.CDLL, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology: Tensor,
              pos_gradient_boost: float = 1.0) -> Tensor:
    return _Antialias.apply(color, rast, pos, tri, topology, float(pos_gradient_boost), lib)
