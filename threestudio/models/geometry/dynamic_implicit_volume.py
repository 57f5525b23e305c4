"""`dynamic-implicit-volume`: a time-varying density + feature field for 4D reconstruction.

Design (why a deformation field): a point x at time t in [0, 1] is carried into a canonical space by a
deformation, x_c = x + D(x, t), and the canonical field is the static `implicit-volume` (hash grid +
density/feature MLPs, the same parameters and CPU / tinycudann backends). The alternative, factorised
space-time planes added to the hash-grid features, stores each moving part once per time slice and sees it
only in the ~10-20 views of that frame; a deformation field shares one canonical shape and texture between
all views of all frames (a views x frames matrix gives V*F observations of it), so per-frame meshes keep the
same texture and the held-out frames interpolate the motion rather than the appearance. Parts that appear or
disappear (topology changes) are outside what a deformation represents; the canonical density prior
(`density_bias`) is kept in world space, so the interior of the object stays solid at every time.

The deformation (`deformation_model`): "trajectory" (default) is D(x, t) = sum_k c_k(x) phi_k(t), the
network maps the encoded point to the coefficients of a low-frequency time basis (sin, cos of pi k t,
k = 1..trajectory_frequencies; no constant term: a fixed offset is the canonical field's). Every point moves
on a smooth curve, so a time between frames interpolates. The point goes through its own hash grid
(DEFAULT_DEFORMATION_POS_ENCODING): per-part motion is discontinuous where a moving part touches a static
one. "mlp" is one network on the encoded point and the encoded time (`deformation_time_encoding_config`).
Measured on the bundled example (benchmarks/bench_reconstruction_4d.py, 1 thread; held-out PSNR all /
novel view / novel frame in dB; Chamfer-L1 mean / worst frame of the per-frame meshes with the example's
exporter settings, cavity_passage 2 and threshold 5):
- mlp on 3 frequencies of x and t (the first design), 1500 steps: 28.46 / 29.16 / 27.43; 0.0088 / 0.0111.
  Moving thin parts blur: a few frequencies cannot make the motion's spatial discontinuities.
- mlp on a hash grid of x (8 levels to 130³, 2^17 entries), 1500 steps: 28.69 / 31.24 / 25.47. Sharp at the
  training frames, but the held-out frame shreds moving parts: nothing keeps D smooth in t between frames.
- trajectory on that grid, 1500 steps: 29.70 / 31.80 / 27.07.
- trajectory on a collision-free grid (6 levels to 64³, 2^18 entries), 1500 steps: 29.58 / 30.93 / 27.86;
  0.0077 / 0.0090; 2000 steps: 30.55 / 32.27 / 28.37; 0.0071 / 0.0084. Hash collisions give a point another
  point's motion at the frames where nothing constrains it.
- the same grid coarse to fine (the default), 2000 steps: 30.89 / 32.07 / 29.45; 0.0078 / 0.0091. The smooth
  motion is fitted first, so the space a thin part sweeps between two frames moves with the part (at the
  held-out frame a moving chimney stays whole instead of shredding).

Time: `at_time(t)` sets the time of every query inside the `with` block (a float, a per-point tensor
(N,) or "random": a fresh uniform time per point, the union over time, used for the occupancy grid).
Outside a block queries use `default_time`. At a fixed t this is a static field with the API of
`implicit-volume` (forward, forward_density, export, isosurface), so renderers and exporters use it
unchanged. `temporal_smoothness(points)` is the regulariser: the squared second difference of D in time
(zero for a static scene and for motion at constant velocity).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch

import threestudio
from threestudio.models.geometry.base import contract_to_unit_cube
from threestudio.models.geometry.implicit_volume import ImplicitVolume
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.utils.config import ConfigError

TimeSpec = Union[float, torch.Tensor, str]

# D's position input: a multi-resolution hash grid (a per-part motion is discontinuous where a moving part
# touches a static one, which a few frequencies cannot represent), 6 levels up to 64³ in 2^18 entries (no hash
# collisions), coarse to fine (2 levels, one more every 150 steps)
DEFAULT_DEFORMATION_POS_ENCODING = {"otype": "ProgressiveBandHashGrid", "n_levels": 6, "n_features_per_level": 2,
                                    "log2_hashmap_size": 18, "base_resolution": 16, "per_level_scale": 1.32,
                                    "start_level": 2, "start_step": 0, "update_steps": 150}


@threestudio.register("dynamic-implicit-volume")
class DynamicImplicitVolume(ImplicitVolume):
    """`implicit-volume` queried at canonical points x + D(x, t). Parameters: those of `implicit-volume`
    plus `deformation_pos_encoding`, `deformation_time_encoding` and `deformation_network`."""

    @dataclass
    class Config(ImplicitVolume.Config):
        # D's inputs: the point in the unit cube and the time, each through its own encoding; null: the
        # default (DEFAULT_DEFORMATION_POS_ENCODING), replaced as a whole (not merged) by a given mapping
        deformation_pos_encoding_config: Optional[dict] = None
        # how D depends on t: "trajectory" (D(x, t) = sum_k c_k(x) phi_k(t), the network maps the encoded point to
        # the coefficients of a low-frequency time basis: sin(pi k t), cos(pi k t), k = 1..trajectory_frequencies)
        # or "mlp" (one network on the encoded point and the encoded time, deformation_time_encoding_config)
        deformation_model: str = "trajectory"
        trajectory_frequencies: int = 3
        deformation_time_encoding_config: dict = field(
            default_factory=lambda: {"otype": "Frequency", "n_frequencies": 4, "include_xyz": True})
        deformation_network_config: dict = field(
            default_factory=lambda: {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                                     "n_neurons": 64, "n_hidden_layers": 2})
        # D = deformation_scale * tanh(MLP / deformation_scale): bounded displacement in world units
        deformation_scale: float = 0.5
        # time of queries made outside an `at_time` block
        default_time: float = 0.0
        # time step of the finite differences of the temporal smoothness regulariser
        temporal_delta: float = 0.05

    cfg: Config

    def configure(self) -> None:
        if self.cfg.normal_type == "analytic":
            raise ConfigError(f"{self.config_path}.normal_type 'analytic' is not supported by the dynamic field; "
                              "use 'finite_difference' (the default) or 'finite_difference_laplacian'.")
        super().configure()
        if self.cfg.deformation_scale <= 0 or self.cfg.temporal_delta <= 0:
            raise ConfigError(f"{self.config_path}.deformation_scale and temporal_delta must be positive.")
        if self.cfg.deformation_model not in ("trajectory", "mlp"):
            raise ConfigError(f"{self.config_path}.deformation_model must be 'trajectory' or 'mlp', "
                              f"got '{self.cfg.deformation_model}'.")
        if self.cfg.deformation_model == "trajectory" and self.cfg.trajectory_frequencies < 1:
            raise ConfigError(f"{self.config_path}.trajectory_frequencies must be at least 1, "
                              f"got {self.cfg.trajectory_frequencies}.")
        try:
            pos_config = self.cfg.deformation_pos_encoding_config or DEFAULT_DEFORMATION_POS_ENCODING
            self.deformation_pos_encoding = get_encoding(3, pos_config)
            n_in = self.deformation_pos_encoding.n_output_dims
            if self.cfg.deformation_model == "mlp":
                self.deformation_time_encoding = get_encoding(1, self.cfg.deformation_time_encoding_config)
                n_in += self.deformation_time_encoding.n_output_dims
                n_out = 3
            else:
                n_out = 3 * 2 * self.cfg.trajectory_frequencies
            self.deformation_network = get_mlp(n_in, n_out, self.cfg.deformation_network_config)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.config_path}: {e}") from None
        # the field starts static: the last layer of D is zero
        last = [p for name, p in self.deformation_network.named_parameters() if name.endswith("weight")][-1]
        with torch.no_grad():
            last.zero_()
        self._time: Optional[TimeSpec] = None

    # ------------------------------------------------------------------ time
    @contextlib.contextmanager
    def at_time(self, time: TimeSpec) -> Iterator["DynamicImplicitVolume"]:
        """Queries inside the block are at `time`: a number in [0, 1], a per-point tensor (N,) or "random"."""
        if isinstance(time, str) and time != "random":
            raise ValueError(f"time must be a number, a tensor or 'random', got '{time}'.")
        if torch.is_tensor(time) and time.numel() == 1:
            time = float(time)
        previous, self._time = self._time, time
        try:
            yield self
        finally:
            self._time = previous

    @property
    def time(self) -> TimeSpec:
        return self.cfg.default_time if self._time is None else self._time

    def _times_for(self, points: torch.Tensor, time: Optional[TimeSpec] = None) -> torch.Tensor:
        """(N, 1) times of the flattened points."""
        time = self.time if time is None else time
        n = points.numel() // 3
        if isinstance(time, str):
            return torch.rand(n, 1, device=points.device, dtype=points.dtype)
        if torch.is_tensor(time):
            m = time.numel()
            if m == 0 or n % m != 0:
                raise ValueError(f"A per-point time needs {n} values (or a divisor of it), got {m}.")
            # points (N, k, 3) derived from N base points (finite-difference normals) share their time
            return time.reshape(m, 1).to(points).repeat_interleave(n // m, dim=0)
        return torch.full((n, 1), float(time), device=points.device, dtype=points.dtype)

    # ------------------------------------------------------------------ deformation
    def deformation(self, points: torch.Tensor, time: Optional[TimeSpec] = None) -> torch.Tensor:
        """D(x, t) (..., 3) in world units for world points (..., 3)."""
        x = contract_to_unit_cube(points, self.bbox).reshape(-1, 3)
        t = self._times_for(points, time)
        if self.cfg.deformation_model == "mlp":
            enc = torch.cat([self.deformation_pos_encoding(x), self.deformation_time_encoding(t)], dim=-1)
            raw = self.deformation_network(enc)
        else:
            coefficients = self.deformation_network(self.deformation_pos_encoding(x))
            coefficients = coefficients.view(-1, 3, 2 * self.cfg.trajectory_frequencies)
            raw = (coefficients * self.time_basis(t).unsqueeze(1)).sum(-1)
        s = self.cfg.deformation_scale
        return (s * torch.tanh(raw / s)).view(*points.shape[:-1], 3)

    def time_basis(self, t: torch.Tensor) -> torch.Tensor:
        """(N, 2K) trajectory basis at times t (N, 1): sin(pi k t), cos(pi k t) for k = 1..K. No constant term (a
        time-independent offset is the canonical field's), and a half period over [0, 1], so a motion need not
        be periodic over the sequence."""
        k = torch.arange(1, self.cfg.trajectory_frequencies + 1, device=t.device, dtype=t.dtype)
        angle = torch.pi * t * k
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)

    def canonical_points(self, points: torch.Tensor, time: Optional[TimeSpec] = None) -> torch.Tensor:
        return points + self.deformation(points, time)

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        x = contract_to_unit_cube(self.canonical_points(points), self.bbox).reshape(-1, self.cfg.n_input_dims)
        return self.encoding(x)

    # ------------------------------------------------------------------ regulariser
    def temporal_smoothness(self, points: torch.Tensor, times: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean over points of |D(x, t+d) - 2 D(x, t) + D(x, t-d)|^2 / d^2 (d = temporal_delta), at the given
        per-point times or uniform random ones. Zero when D does not depend on t."""
        points = points.reshape(-1, 3)
        d = self.cfg.temporal_delta
        if times is None:
            times = torch.rand(points.shape[0], device=points.device) * (1 - 2 * d) + d
        times = times.reshape(-1).to(points)
        stacked = torch.cat([points, points, points])
        t = torch.cat([times - d, times, times + d])
        disp = self.deformation(stacked, t).view(3, -1, 3)
        second = disp[0] - 2 * disp[1] + disp[2]
        return (second ** 2).sum(-1).mean() / d ** 2
