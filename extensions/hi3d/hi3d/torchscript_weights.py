"""Tensors of a TorchScript archive (OpenAI's `ViT-L-14.pt`) read without running any of its code.

`torch.jit.load` compiles and runs the archive's code, and `torch.load(weights_only=True)` refuses TorchScript.
The archive is a zip whose `data.pkl` pickles the module tree as `__torch__.*` objects whose attributes are
tensors (persistent ids into `data/<key>`) and sub-objects. The unpickler below accepts only that: placeholder
objects for `__torch__.*` classes, `torch._utils._rebuild_tensor_v2`, typed storages and `OrderedDict`;
every other global is refused. Written here because no library reads TorchScript weights this way.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Dict

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands for one `__torch__.*` module: keeps its pickled attribute dict, runs nothing."""

    def __init__(self, *args):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"__state__": state}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return torch.empty(0, dtype=storage.dtype).set_(storage._untyped_storage, offset, tuple(size), tuple(stride))


class _WeightsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a TorchScript archive (only module attributes and tensors are read)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
        raw = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def read_torchscript_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Flat {dotted.attribute.name: tensor} of a TorchScript archive (e.g. {'visual.conv1.weight': ...})."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path!r} is not a TorchScript archive (not a zip file)") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkls:
            raise ValueError(f"{path!r} has no <name>/data.pkl: not a TorchScript archive")
        root = pkls[0].split("/")[0]
        obj = _WeightsOnlyUnpickler(archive.read(pkls[0]), archive, root).load()
    out: Dict[str, torch.Tensor] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            out[prefix[:-1]] = node
        elif isinstance(node, _ScriptObject):
            for k, v in node.state.items():
                walk(v, f"{prefix}{k}.")

    walk(obj, "")
    return out
