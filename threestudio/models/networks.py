"""Encodings and MLPs from tinycudann-style configs, with CPU implementations of every piece.

`get_encoding(n_input_dims, config)` and `get_mlp(n_in, n_out, config)` accept threestudio's
configs. On CPU (or without tinycudann) everything runs in PyTorch / our CPU kernel with the same
parameter layouts where tcnn defines one; tinycudann is imported lazily and only on CUDA.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from threestudio.models.encodings.directional import (
    FrequencyEncoding,
    IdentityEncoding,
    ProgressiveBandFrequency,
    SphericalHarmonicsEncoding,
)
from threestudio.models.encodings.hash_grid import HashGridEncoding, tcnn_available
from threestudio.utils.base import Updateable
from threestudio.utils.config import ConfigError

GRID_OTYPES = ("HashGrid", "DenseGrid", "TiledGrid", "Grid", "ProgressiveBandHashGrid")
TCNN_MLP_OTYPES = ("FullyFusedMLP", "CutlassMLP")


def _as_dict(config: Any, where: str = "") -> dict:
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError(f"{where or 'network config'}: expected a mapping of network options, got {config!r}.")


_COMMON_KEYS = {"otype": str, "include_xyz": bool, "backend": str}
_GRID_KEYS = {"n_levels": "pos", "n_features_per_level": "pos", "log2_hashmap_size": "pos", "base_resolution": "pos",
              "per_level_scale": float, "interpolation": str}
# keys each encoding / MLP reads ("pos": positive int); anything else is a typo the user should hear about
ENCODING_KEYS: dict[str, dict] = {
    **{otype: _GRID_KEYS for otype in ("HashGrid", "DenseGrid", "TiledGrid")},
    "Grid": {**_GRID_KEYS, "type": str},
    "ProgressiveBandHashGrid": {**_GRID_KEYS, "start_level": int, "start_step": int, "update_steps": "pos"},
    "SphericalHarmonics": {"degree": "pos"},
    "Frequency": {"n_frequencies": "pos"},
    "ProgressiveBandFrequency": {"n_frequencies": "pos", "n_masking_step": int},
    "Identity": {"scale": float, "offset": float},
}
MLP_KEYS = {"otype": str, "n_neurons": "pos", "n_hidden_layers": "pos", "activation": str,
            "output_activation": (str, type(None)), "backend": str}


def _check_keys(cfg: dict, allowed: dict, where: str, what: str) -> None:
    """Unknown keys and values of the wrong type name the full config key."""
    for key, value in cfg.items():
        if key not in allowed:
            raise ConfigError(f"Unknown key '{where}.{key}' for {what}. Valid keys: {', '.join(allowed)}.")
        kind = allowed[key]
        if kind == "pos":
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            wanted = "a positive integer"
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            wanted = "a number"
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            wanted = "an integer"
        else:
            ok = isinstance(value, kind)
            wanted = "of type " + (kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind))
        if not ok:
            raise ConfigError(f"Invalid value for '{where}.{key}': {value!r} must be {wanted}.")


def validate_encoding_config(config: Any, where: str = "encoding_config") -> dict:
    """Check a tcnn-style encoding config before anything is built; returns it as a dict."""
    cfg = _as_dict(config, where)
    otype = cfg.get("otype")
    if otype in ENCODING_KEYS:
        _check_keys(cfg, {**_COMMON_KEYS, **ENCODING_KEYS[otype]}, where, f"the {otype} encoding")
    return cfg


def validate_mlp_config(config: Any, where: str = "mlp_network_config") -> dict:
    """Check a tcnn-style MLP config (VanillaMLP, FullyFusedMLP, CutlassMLP)."""
    cfg = _as_dict(config, where)
    if cfg.get("otype", "VanillaMLP") in ("VanillaMLP",) + TCNN_MLP_OTYPES:
        _check_keys(cfg, MLP_KEYS, where, f"the {cfg.get('otype', 'VanillaMLP')} network")
    return cfg


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): keeps early density gradients finite."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def get_activation(name: Optional[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation by threestudio name (none, sigmoid, softplus, exp, trunc_exp, relu, tanh, ...)."""
    if name is None:
        return lambda x: x
    key = name.lower()
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "none": lambda x: x,
        "exp": torch.exp,
        "shifted_exp": lambda x: torch.exp(x - 1.0),
        "trunc_exp": trunc_exp,
        "shifted_trunc_exp": lambda x: trunc_exp(x - 1.0),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": F.softplus,
        "shifted_softplus": lambda x: F.softplus(x - 1.0),
        "relu": F.relu,
        "scale_-11_01": lambda x: x * 0.5 + 0.5,
        "lin2srgb": lambda x: torch.where(
            x > 0.0031308, torch.pow(torch.clamp(x, min=0.0031308), 1.0 / 2.4) * 1.055 - 0.055, 12.92 * x
        ).clamp(0.0, 1.0),
    }
    if key in table:
        return table[key]
    fn = getattr(F, key, None)
    if fn is None:
        raise ValueError(f"Unknown activation '{name}'. Known: {', '.join(sorted(table))} or any torch.nn.functional name.")
    return fn


class CompositeEncoding(nn.Module, Updateable):
    """Wraps an encoding; optionally prepends the input mapped from [0, 1] to [-1, 1] (`include_xyz`)."""

    def __init__(self, encoding: nn.Module, include_xyz: bool = False, xyz_scale: float = 2.0,
                 xyz_offset: float = -1.0) -> None:
        super().__init__()
        self.encoding = encoding
        self.include_xyz, self.xyz_scale, self.xyz_offset = include_xyz, xyz_scale, xyz_offset
        self.n_input_dims = encoding.n_input_dims
        self.n_output_dims = int(include_xyz) * encoding.n_input_dims + encoding.n_output_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoding(x)
        if not self.include_xyz:
            return enc
        return torch.cat([x * self.xyz_scale + self.xyz_offset, enc], dim=-1)

    def position_vjp(self, x: torch.Tensor, grad_enc: torch.Tensor) -> torch.Tensor:
        """sum_j grad_enc[:, j] * d out_j / d x (N, 3), differentiable (see HashGridEncoding.position_vjp)."""
        xyz = 0
        if self.include_xyz:
            n = self.encoding.n_input_dims
            xyz, grad_enc = grad_enc[:, :n] * self.xyz_scale, grad_enc[:, n:]
        inner = getattr(self.encoding, "position_vjp", None)
        if inner is not None:
            return inner(x, grad_enc) + xyz
        with torch.enable_grad():
            x_leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            grad = torch.autograd.grad(self.encoding(x_leaf), x_leaf, grad_enc, create_graph=True)[0]
        return grad + xyz


class TCNNEncoding(nn.Module):
    """A tinycudann encoding other than the grid (e.g. SphericalHarmonics on CUDA)."""

    def __init__(self, n_input_dims: int, config: dict) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.n_input_dims = n_input_dims
        self.encoding = tcnn.Encoding(n_input_dims, config, dtype=torch.float32)
        self.n_output_dims = self.encoding.n_output_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x).float()


def get_encoding(n_input_dims: int, config: Any, where: str = "encoding_config") -> CompositeEncoding:
    """An encoding from a tcnn-style config; inputs are expected in [0, 1]. `where` is the config key
    errors name (e.g. system.geometry.pos_encoding_config)."""
    cfg = validate_encoding_config(config, where)
    otype = cfg.get("otype")
    encoding: nn.Module
    if otype in GRID_OTYPES:
        encoding = HashGridEncoding(n_input_dims, cfg)
    elif otype == "SphericalHarmonics":
        encoding = SphericalHarmonicsEncoding(n_input_dims, cfg)
    elif otype == "Frequency":
        encoding = FrequencyEncoding(n_input_dims, cfg)
    elif otype == "ProgressiveBandFrequency":
        encoding = ProgressiveBandFrequency(n_input_dims, cfg)
    elif otype == "Identity":
        encoding = IdentityEncoding(n_input_dims, cfg)
    elif otype is not None and cfg.get("backend", "auto") != "torch" and tcnn_available():
        encoding = TCNNEncoding(n_input_dims, {k: v for k, v in cfg.items() if k not in ("include_xyz", "backend")})
    else:
        raise ConfigError(
            f"{where}.otype: Unknown encoding otype '{otype}'. Supported without tinycudann: "
            f"{', '.join(GRID_OTYPES + ('SphericalHarmonics', 'Frequency', 'ProgressiveBandFrequency', 'Identity'))}."
        )
    return CompositeEncoding(encoding, include_xyz=bool(cfg.get("include_xyz", False)))


def _mlp_forward(x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    h = x
    for w in weights[:-1]:
        h = torch.relu(h @ w.t())
    return h @ weights[-1].t()


class _ChunkedMLPFunction(torch.autograd.Function):
    """A bias-free ReLU MLP evaluated in row chunks; backward recomputes each chunk's activations.

    Only inputs and outputs are kept, never the (N, n_neurons) hidden activations: on a CPU this
    keeps the working set in cache and is about twice as fast as the layer-by-layer autograd
    graph for the hundreds of thousands of samples of a volume render. Under create_graph (e.g.
    analytic normals) the backward rebuilds the ordinary graph so higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, chunk: int, *weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, *weights)
        ctx.chunk = chunk
        out = x.new_empty(x.shape[0], weights[-1].shape[0])
        for i in range(0, x.shape[0], chunk):
            h = x[i:i + chunk]
            for w in weights[:-1]:
                h = torch.relu_(h @ w.t())
            torch.mm(h, weights[-1].t(), out=out[i:i + chunk])
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, *weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            # double backward requested: differentiate a rebuilt graph of the whole MLP
            inputs = [t for t, n in zip([x, *weights], [needs[0], *needs[2:]]) if n]
            out = _mlp_forward(x, tuple(weights))
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            gx = next(grads) if needs[0] else None
            return (gx, None, *[next(grads) if n else None for n in needs[2:]])
        grad_ws = [torch.zeros_like(w) if n else None for w, n in zip(weights, needs[2:])]
        gx = torch.empty_like(x) if needs[0] else None
        for i in range(0, x.shape[0], ctx.chunk):
            hs = [x[i:i + ctx.chunk]]
            for w in weights[:-1]:
                hs.append(torch.relu_(hs[-1] @ w.t()))
            g = grad_out[i:i + ctx.chunk]
            for layer in range(len(weights) - 1, -1, -1):
                if grad_ws[layer] is not None:
                    grad_ws[layer].addmm_(g.t(), hs[layer])
                if layer == 0 and gx is None:
                    break
                g = g @ weights[layer]
                if layer > 0:
                    g = g.mul_(hs[layer] > 0)
            if gx is not None:
                gx[i:i + ctx.chunk] = g
        return (gx, None, *grad_ws)


class VanillaMLP(nn.Module):
    """Linear layers without bias (like tcnn's MLPs), ReLU between them, optional output activation.

    Keys: `layers.{0,2,...}.weight`, as in threestudio's VanillaMLP. The same math as tcnn's
    FullyFusedMLP, whose flat `params` map to these weights with `load_tcnn_mlp_params`.
    Large CPU batches are evaluated in chunks (see `_ChunkedMLPFunction`); `chunk_size` 0 turns
    that off.
    """

    chunk_size: int = 8192

    def __init__(self, dim_in: int, dim_out: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.n_neurons = int(config.get("n_neurons", 64))
        self.n_hidden_layers = int(config.get("n_hidden_layers", 1))
        activation = str(config.get("activation", "ReLU"))
        if activation.lower() != "relu":
            raise ValueError(f"VanillaMLP supports activation 'ReLU' only, got '{activation}'.")
        if self.n_hidden_layers < 1:
            raise ValueError(f"n_hidden_layers must be at least 1, got {self.n_hidden_layers}.")
        dims = [dim_in] + [self.n_neurons] * self.n_hidden_layers + [dim_out]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)
        self.dim_in, self.dim_out = dim_in, dim_out
        self.output_activation = get_activation(config.get("output_activation", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chunk_size > 0 and x.dim() == 2 and x.device.type == "cpu" and x.shape[0] > self.chunk_size:
            weights = tuple(m.weight for m in self.layers if isinstance(m, nn.Linear))
            out = _ChunkedMLPFunction.apply(x.contiguous(), self.chunk_size, *weights)
        else:
            out = self.layers(x)
        return self.output_activation(out)


class TCNNNetwork(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, config: dict) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.network = tcnn.Network(dim_in, dim_out, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).float()


def get_mlp(n_input_dims: int, n_output_dims: int, config: Any, where: str = "mlp_network_config") -> nn.Module:
    """VanillaMLP, or FullyFusedMLP/CutlassMLP (tinycudann on CUDA, VanillaMLP elsewhere)."""
    cfg = validate_mlp_config(config, where)
    otype = cfg.get("otype", "VanillaMLP")
    if otype == "VanillaMLP":
        return VanillaMLP(n_input_dims, n_output_dims, cfg)
    if otype in TCNN_MLP_OTYPES:
        if cfg.get("backend", "auto") != "torch" and tcnn_available():
            return TCNNNetwork(n_input_dims, n_output_dims, {k: v for k, v in cfg.items() if k != "backend"})
        return VanillaMLP(n_input_dims, n_output_dims, cfg)
    raise ConfigError(f"{where}.otype: Unknown MLP otype '{otype}'; expected VanillaMLP, FullyFusedMLP or CutlassMLP.")


def load_tcnn_mlp_params(mlp: VanillaMLP, params: torch.Tensor) -> None:
    """Load a tinycudann FullyFusedMLP/CutlassMLP `params` vector into a VanillaMLP.

    tcnn stores the layers' weights one after the other (input, hidden..., output), each row-major
    as (out_width, in_width); the output layer has its rows padded to a multiple of 16 and the input
    layer may have padded columns. Padding is dropped here (the input padding is inferred from the
    vector's length).
    """
    linears = [m for m in mlp.layers if isinstance(m, nn.Linear)]
    flat = params.reshape(-1).float()
    width = linears[0].weight.shape[0]
    out_f = linears[-1].weight.shape[0]
    out_p = (out_f + 15) // 16 * 16
    rest = flat.numel() - (len(linears) - 2) * width * width - out_p * width
    if rest <= 0 or rest % width != 0 or rest // width < linears[0].weight.shape[1]:
        raise ValueError(
            f"A tcnn parameter vector of {flat.numel()} values does not fit this MLP "
            f"({[tuple(m.weight.shape) for m in linears]})."
        )
    in_p = rest // width
    start = 0
    for i, lin in enumerate(linears):
        rows = out_p if i == len(linears) - 1 else lin.weight.shape[0]
        cols = in_p if i == 0 else lin.weight.shape[1]
        block = flat[start:start + rows * cols].view(rows, cols)
        with torch.no_grad():
            lin.weight.copy_(block[: lin.weight.shape[0], : lin.weight.shape[1]])
        start += rows * cols
