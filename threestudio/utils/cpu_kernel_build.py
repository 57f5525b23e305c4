"""Building the project's C++/OpenMP CPU kernels (threestudio/csrc/*.cpp) on first use.

A kernel source has no torch headers (callers pass raw pointers through ctypes), so a build takes
seconds. `torch.utils.cpp_extension.load` compiles it into its cache directory (TORCH_EXTENSIONS_DIR,
default ~/.cache/torch_extensions/...); later processes only run a no-op ninja check.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
import warnings
from typing import Callable, Optional

CSRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
STALE_LOCK_SECONDS = 600


def kernels_disabled() -> bool:
    """THREESTUDIO_DISABLE_CPU_KERNELS=1 makes every kernel fall back to its pure-PyTorch reference."""
    return os.environ.get("THREESTUDIO_DISABLE_CPU_KERNELS", "0") not in ("", "0")


def _remove_stale_lock(build_dir: str) -> None:
    # torch's build lock is a file; a process killed mid-build leaves it behind and every later
    # process would wait forever. A build takes seconds, so an old lock is certainly stale.
    lock = os.path.join(build_dir, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return
    if age > STALE_LOCK_SECONDS:
        warnings.warn(f"Removing stale build lock {lock} ({age:.0f} s old).")
        try:
            os.remove(lock)
        except OSError:
            pass


def compile_cpu_kernel(name: str, source_file: str, abi_function: str, abi_version: int) -> ctypes.CDLL:
    """Compile csrc/`source_file` as extension `name` (cached) and open it; checks `abi_function()`."""
    from torch.utils.cpp_extension import _get_build_directory, load

    build_dir = _get_build_directory(name, verbose=False)
    _remove_stale_lock(build_dir)
    path = load(
        name=name,
        sources=[os.path.join(CSRC_DIR, source_file)],
        extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_ldflags=["-fopenmp"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    lib = ctypes.CDLL(path)
    found = getattr(lib, abi_function)()
    if found != abi_version:
        raise RuntimeError(f"{path} has ABI version {found}, expected {abi_version}.")
    return lib


class LazyKernel:
    """A kernel library built on the first `load()` (thread-safe, attempted once per process). A failed
    build warns once, naming the fallback, and `load()` returns None from then on."""

    def __init__(self, description: str, compile_fn: Callable[[], ctypes.CDLL], fallback: str) -> None:
        self.description = description
        self.compile_fn = compile_fn
        self.fallback = fallback
        self.lib: Optional[ctypes.CDLL] = None
        self.attempted = False
        self.error: Optional[str] = None
        self.build_seconds: Optional[float] = None  # time of the build (or cache check), for benchmarks
        self._lock = threading.Lock()

    def load(self) -> Optional[ctypes.CDLL]:
        if self.attempted:
            return self.lib
        with self._lock:
            if self.attempted:
                return self.lib
            if kernels_disabled():
                self.error = "disabled by THREESTUDIO_DISABLE_CPU_KERNELS"
            else:
                start = time.perf_counter()
                try:
                    self.lib = self.compile_fn()
                except Exception as e:  # noqa: BLE001 - any build failure means: use the reference
                    self.error = f"{type(e).__name__}: {e}"
                    self.lib = None
                self.build_seconds = time.perf_counter() - start
            self.attempted = True
            if self.lib is None:
                warnings.warn(f"The {self.description} is unavailable ({self.error}); using {self.fallback}. "
                              "Install a C++ compiler with OpenMP (g++) and ninja to enable it.")
        return self.lib
