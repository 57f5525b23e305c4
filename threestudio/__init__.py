"""threestudio: text/image-to-3D by score distillation with multiview and video diffusion priors."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, TypeVar

__version__ = "0.1.0"

T = TypeVar("T", bound=type)

__modules__: dict[str, type] = {}
_BUILTIN_PACKAGES = ("threestudio.models", "threestudio.systems", "threestudio.data")
_builtins_imported = False


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` constructible by `find(name)` from configs."""

    def decorator(cls: T) -> T:
        existing = __modules__.get(name)
        # Re-importing the same module (e.g. importlib.reload) registers the same class again.
        if existing is not None and _qualname(existing) != _qualname(cls):
            raise ValueError(
                f"Module name '{name}' is registered twice: by {_qualname(existing)} and by "
                f"{_qualname(cls)}. Rename one of them."
            )
        __modules__[name] = cls
        return cls

    return decorator


def import_builtin_modules() -> None:
    """Import every built-in module package so that their classes are registered."""
    global _builtins_imported
    if _builtins_imported:
        return
    _builtins_imported = True
    for package in _BUILTIN_PACKAGES:
        importlib.import_module(package)


def find(name: str) -> type:
    """Return the class registered under `name`."""
    if name not in __modules__:
        import_builtin_modules()
    if name not in __modules__:
        close = difflib.get_close_matches(name, list(__modules__), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown module '{name}'.{hint} Registered modules: {', '.join(sorted(__modules__))}."
        )
    return __modules__[name]


def registered_names() -> list[str]:
    import_builtin_modules()
    return sorted(__modules__)
