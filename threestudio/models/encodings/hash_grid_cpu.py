"""Fused C++/OpenMP CPU kernel for the hash grid: lazy build, ctypes binding, autograd functions.

The kernel (threestudio/csrc/hash_grid_cpu.cpp) is compiled on first use with
`torch.utils.cpp_extension.load` and cached in its build directory (TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions/...); later processes only run a no-op ninja check. The source has no
torch headers (it takes raw pointers), so the build takes seconds. If the build fails, callers get
`None` from `load_kernel()` and fall back to the pure-PyTorch reference with a warning.

Gradients: first order with respect to positions and the table, and second order (as needed by
analytic normals, i.e. gradients of d(output)/d(positions)) with respect to the incoming gradient,
the positions and the table. Third-order derivatives are not supported.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Optional

import numpy as np
import torch

from threestudio.models.encodings.hash_grid_layout import HashGridLayout
from threestudio.utils.cpu_kernel_build import LazyKernel, compile_cpu_kernel

logger = logging.getLogger(__name__)

_EXTENSION_NAME = "threestudio_hash_grid_cpu"
_ABI_VERSION = 1


_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_i32 = ctypes.c_int


def _compile() -> ctypes.CDLL:
    lib = compile_cpu_kernel(_EXTENSION_NAME, "hash_grid_cpu.cpp", "hg_abi_version", _ABI_VERSION)
    meta = [_p, _i64, _p, _i32, _i32, _p, _p, _p, _p]  # x, n, params, L, F, scales, res, offs, hashed
    lib.hg_forward.argtypes = meta + [_p, _i32]
    lib.hg_backward.argtypes = meta + [_p, _p, _p, _p, _i32]
    lib.hg_backward_backward.argtypes = meta + [_p, _p, _p, _p, _p, _p, _i32]
    for fn in (lib.hg_forward, lib.hg_backward, lib.hg_backward_backward):
        fn.restype = _i32
    return lib


kernel = LazyKernel("fused CPU hash-grid kernel", lambda: _compile(), "the slower pure-PyTorch hash grid")

# the module's entry points; LazyKernel holds the build state (`kernel.error`, `kernel.build_seconds`)
load_kernel = kernel.load


class GridMeta:
    """Per-level constants of a layout, as arrays the kernel can read."""

    def __init__(self, layout: HashGridLayout) -> None:
        self.layout = layout
        self.n_levels = layout.n_levels
        self.n_features = layout.n_features_per_level
        self.n_params = layout.n_params
        self.n_output_dims = layout.n_output_dims
        self._scales = np.asarray(layout.scales, dtype=np.float32)
        self._resolutions = np.asarray(layout.resolutions, dtype=np.uint32)
        self._offsets = np.asarray(layout.offsets, dtype=np.uint32)
        self._hashed = np.asarray(layout.hashed, dtype=np.uint8)

    def args(self) -> tuple:
        return (self.n_levels, self.n_features, self._scales.ctypes.data, self._resolutions.ctypes.data,
                self._offsets.ctypes.data, self._hashed.ctypes.data)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _check(code: int) -> None:
    if code != 0:
        raise RuntimeError("The CPU hash-grid kernel rejected its arguments (unsupported feature count).")


def _threads() -> int:
    return max(1, torch.get_num_threads())


def kernel_forward(lib: ctypes.CDLL, meta: GridMeta, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    out = torch.empty(n, meta.n_output_dims, dtype=torch.float32)
    if n > 0:
        _check(lib.hg_forward(_ptr(x), n, _ptr(params), *meta.args(), _ptr(out), _threads()))
    return out


def kernel_backward(lib: ctypes.CDLL, meta: GridMeta, x: torch.Tensor, params: torch.Tensor,
                    grad_out: torch.Tensor, want_x: bool, want_params: bool
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    n = x.shape[0]
    nt = _threads()
    grad_x = torch.empty(n, 3, dtype=torch.float32) if want_x else None
    grad_params = torch.empty(meta.n_params, dtype=torch.float32) if want_params else None
    if want_params and n == 0:
        grad_params.zero_()
    if n > 0 and (want_x or want_params):
        scratch = torch.empty(nt * n * 3, dtype=torch.float32) if want_x else None
        _check(lib.hg_backward(_ptr(x), n, _ptr(params), *meta.args(), _ptr(grad_out), _ptr(grad_params),
                               _ptr(grad_x), _ptr(scratch), nt))
    elif grad_x is not None:
        grad_x.zero_()
    return grad_x, grad_params


def kernel_backward_backward(lib: ctypes.CDLL, meta: GridMeta, x: torch.Tensor, params: torch.Tensor,
                             grad_out: torch.Tensor, gg_x: torch.Tensor, want_grad_out: bool,
                             want_params: bool, want_x: bool
                             ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    n = x.shape[0]
    nt = _threads()
    g_grad_out = torch.empty(n, meta.n_output_dims, dtype=torch.float32) if want_grad_out else None
    g_params = torch.empty(meta.n_params, dtype=torch.float32) if want_params else None
    g_x = torch.empty(n, 3, dtype=torch.float32) if want_x else None
    if n > 0 and (want_grad_out or want_params or want_x):
        scratch = torch.empty(nt * n * 3, dtype=torch.float32) if want_x else None
        _check(lib.hg_backward_backward(_ptr(x), n, _ptr(params), *meta.args(), _ptr(grad_out), _ptr(gg_x),
                                        _ptr(g_grad_out), _ptr(g_params), _ptr(g_x), _ptr(scratch), nt))
    else:
        if g_params is not None:
            g_params.zero_()
        if g_grad_out is not None:
            g_grad_out.zero_()
        if g_x is not None:
            g_x.zero_()
    return g_grad_out, g_params, g_x


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, params: torch.Tensor, lib: ctypes.CDLL, meta: GridMeta) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, params)
        ctx.lib, ctx.meta = lib, meta
        return kernel_forward(lib, meta, x, params)

    @staticmethod
    def backward(ctx, grad_out: Optional[torch.Tensor]):
        if grad_out is None:
            return None, None, None, None
        x, params = ctx.saved_tensors
        want_x, want_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_params = _HashGridBackwardFunction.apply(
            grad_out.contiguous(), x, params, ctx.lib, ctx.meta, want_x, want_params)
        return grad_x, grad_params, None, None


class _HashGridBackwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_out: torch.Tensor, x: torch.Tensor, params: torch.Tensor, lib: ctypes.CDLL,
                meta: GridMeta, want_x: bool, want_params: bool):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_out, x, params)
        ctx.lib, ctx.meta = lib, meta
        return kernel_backward(lib, meta, x, params, grad_out, want_x, want_params)

    @staticmethod
    def backward(ctx, gg_x: Optional[torch.Tensor], gg_params: Optional[torch.Tensor]):
        grad_out, x, params = ctx.saved_tensors
        lib, meta = ctx.lib, ctx.meta
        need_go, need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        g_go = g_x = g_p = None
        if gg_x is not None and (need_go or need_x or need_p):
            g_go, g_p, g_x = kernel_backward_backward(
                lib, meta, x, params, grad_out, gg_x.contiguous(), need_go, need_p, need_x)
        if gg_params is not None and (need_go or need_x):
            # grad_params is linear in grad_out with the forward's weights: its derivatives are the
            # forward and the position-backward evaluated with gg_params as the table
            gg_params = gg_params.contiguous()
            if need_go:
                g_go = _add(g_go, kernel_forward(lib, meta, x, gg_params))
            if need_x:
                g_x = _add(g_x, kernel_backward(lib, meta, x, gg_params, grad_out, True, False)[0])
        return g_go, g_x, g_p, None, None, None, None


def hash_grid_fused_cpu(x: torch.Tensor, params: torch.Tensor, lib: ctypes.CDLL, meta: GridMeta) -> torch.Tensor:
    """Encode x (N, 3) float32 in [0, 1] with the fused kernel (autograd-aware)."""
    if x.device.type != "cpu" or params.device.type != "cpu":
        raise ValueError("The fused CPU hash grid needs CPU tensors.")
    x = x.to(torch.float32).contiguous()
    params = params.contiguous()
    return _HashGridFunction.apply(x, params, lib, meta)


def hash_grid_position_vjp(x: torch.Tensor, grad_enc: torch.Tensor, params: torch.Tensor, lib: ctypes.CDLL,
                           meta: GridMeta) -> torch.Tensor:
    """sum_j grad_enc[:, j] d enc_j / dx without the table gradient; differentiable (second order)."""
    x = x.to(torch.float32).contiguous()
    grad_x, _ = _HashGridBackwardFunction.apply(grad_enc.to(torch.float32).contiguous(), x, params.contiguous(),
                                                lib, meta, True, False)
    return grad_x
