"""Hash-grid encoding: tcnn layout facts, reference semantics, fused CPU kernel == reference."""
from __future__ import annotations

import warnings

import pytest
import torch

from threestudio.models.encodings import hash_grid_cpu
from threestudio.models.encodings.hash_grid import HashGridEncoding, load_tcnn_params
from threestudio.models.encodings.hash_grid_layout import (
    HashGridLayout,
    hash_grid_reference,
    init_params,
)

DEFAULT = dict(otype="HashGrid", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
               base_resolution=16, per_level_scale=1.447269237440378)


def small_config(**overrides) -> dict:
    cfg = dict(otype="HashGrid", n_levels=6, n_features_per_level=2, log2_hashmap_size=12,
               base_resolution=4, per_level_scale=2.0)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def kernel():
    lib = hash_grid_cpu.load_kernel()
    if lib is None:
        pytest.fail(f"the fused CPU kernel did not build: {hash_grid_cpu.kernel.error}")
    return lib


def test_default_layout_matches_tinycudann():
    layout = HashGridLayout.from_config(3, DEFAULT)
    # tcnn: resolution = ceil(base * s^l - 1) + 1; dense levels hold next_multiple(res^3, 8) entries
    assert layout.resolutions[:6] == [16, 24, 34, 49, 71, 102]
    assert layout.level_sizes[:5] == [4096, 13824, 39304, 117656, 357912]
    assert layout.level_sizes[5:] == [2 ** 19] * 11
    assert layout.hashed == [False] * 5 + [True] * 11
    assert layout.n_params == 12599920
    assert layout.n_output_dims == 32
    enc = HashGridEncoding(3, {**DEFAULT, "backend": "torch"})
    params = enc.encoding.params.detach()
    assert params.shape == (12599920,)
    assert float(params.abs().max()) <= 1e-4 and float(params.abs().max()) > 5e-5


def test_reference_dense_and_hashed_indexing():
    layout = HashGridLayout.from_config(3, small_config())
    params = torch.zeros(layout.n_params)
    table = params.view(-1, 2)
    # level 0 is dense: vertex (gx, gy, gz) is entry gx + gy*R + gz*R^2; a point on that vertex reads it
    r0, s0 = layout.resolutions[0], layout.scales[0]
    table[layout.offsets[0] + 1 + 2 * r0 + 3 * r0 * r0] = torch.tensor([0.25, -0.5])
    x = (torch.tensor([[1.0, 2.0, 3.0]]) - 0.5) / s0
    out = hash_grid_reference(x, params, layout)
    assert torch.allclose(out[0, :2], torch.tensor([0.25, -0.5]), atol=1e-6)
    # the last level (resolution 128, 4096 entries) is hashed as tinycudann does: x ^ y*2654435761 ^ z*805459861
    # in uint32, mod the table size. Fixed vectors, worked out independently of the implementation (the second
    # one wraps the 32-bit products): (5,7,9) -> 3817949167 -> entry 2031, (100,77,123) -> 2274332366 -> 3790.
    last = layout.n_levels - 1
    assert layout.hashed[last] and layout.resolutions[last] == 128 and layout.level_sizes[last] == 4096
    for g, entry, value in [((5, 7, 9), 2031, [1.5, 2.5]), ((100, 77, 123), 3790, [-0.75, 3.0])]:
        params.zero_()
        table[layout.offsets[last] + entry] = torch.tensor(value)
        x = (torch.tensor([g], dtype=torch.float32) - 0.5) / layout.scales[last]
        out = hash_grid_reference(x, params, layout)
        assert torch.allclose(out[0, -2:], torch.tensor(value), atol=1e-5), g


def test_reference_interpolates_trilinearly():
    layout = HashGridLayout.from_config(3, small_config(n_levels=1, n_features_per_level=1))
    # a linear function of the vertex coordinates is reproduced exactly by trilinear interpolation
    r = layout.resolutions[0]
    idx = torch.arange(layout.level_sizes[0])
    gx, gy, gz = idx % r, (idx // r) % r, idx // (r * r)
    params = (1.0 * gx + 2.0 * gy - 0.5 * gz).float()
    x = torch.rand(200, 3) * 0.6 + 0.1
    pos = x * layout.scales[0] + 0.5
    expected = pos[:, 0] + 2.0 * pos[:, 1] - 0.5 * pos[:, 2]
    out = hash_grid_reference(x, params, layout)[:, 0]
    assert torch.allclose(out, expected, atol=1e-4)


def _edge_points(n: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.rand(n, 3, generator=generator)
    corners = torch.tensor([[i, j, k] for i in (0.0, 1.0) for j in (0.0, 1.0) for k in (0.0, 1.0)])
    faces = torch.rand(12, 3, generator=generator)
    faces[torch.arange(12), torch.arange(12) % 3] = (torch.arange(12) // 6).float()  # on x/y/z = 0 or 1
    return torch.cat([x, corners, faces])


def _run(fn, x: torch.Tensor, p: torch.Tensor, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = x.clone().requires_grad_(True)
    p = p.clone().requires_grad_(True)
    out = fn(x, p)
    w = torch.randn(out.shape, generator=g)
    gx, gp = torch.autograd.grad((out * w).sum(), [x, p], create_graph=True)
    v = torch.randn(gx.shape, generator=g)
    u = torch.randn(gp.shape, generator=g)
    # second order through both first-order gradients (analytic normals use the gx path)
    gx2, gp2 = torch.autograd.grad((gx * v).sum() + (gp * u).sum() * 1e-3, [x, p])
    return out.detach(), gx.detach(), gp.detach(), gx2, gp2


@pytest.mark.parametrize("config", [
    small_config(),
    small_config(n_features_per_level=1, n_levels=4),
    small_config(n_features_per_level=4, n_levels=3),
    small_config(n_features_per_level=8, n_levels=2, base_resolution=8),
    small_config(otype="DenseGrid", n_levels=3),
    small_config(otype="TiledGrid", n_levels=3, base_resolution=6),
])
def test_fused_kernel_matches_reference(kernel, config):
    layout = HashGridLayout.from_config(3, config)
    meta = hash_grid_cpu.GridMeta(layout)
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(layout.n_params, generator=gen) * 0.1
    x = _edge_points(300, gen)
    ref = _run(lambda a, b: hash_grid_reference(a, b, layout), x, params)
    fused = _run(lambda a, b: hash_grid_cpu.hash_grid_fused_cpu(a, b, kernel, meta), x, params)
    names = ["output", "d/dx", "d/dparams", "d2/dx", "d2/dparams"]
    for name, r, f in zip(names, ref, fused):
        scale = max(float(r.abs().max()), 1.0)
        assert torch.allclose(f, r, atol=2e-5 * scale, rtol=1e-4), f"{name}: max diff {float((f - r).abs().max())}"


def test_fused_kernel_matches_reference_default_config(kernel):
    layout = HashGridLayout.from_config(3, DEFAULT)
    meta = hash_grid_cpu.GridMeta(layout)
    gen = torch.Generator().manual_seed(3)
    params = init_params(layout, gen) * 1e3
    x = _edge_points(400, gen)
    x_ref = x.clone().requires_grad_(True)
    p_ref = params.clone().requires_grad_(True)
    out_ref = hash_grid_reference(x_ref, p_ref, layout)
    x_f = x.clone().requires_grad_(True)
    p_f = params.clone().requires_grad_(True)
    out_f = hash_grid_cpu.hash_grid_fused_cpu(x_f, p_f, kernel, meta)
    assert torch.allclose(out_f, out_ref, atol=1e-6)
    w = torch.randn(out_ref.shape, generator=gen)
    (out_ref * w).sum().backward()
    (out_f * w).sum().backward()
    assert torch.allclose(p_f.grad, p_ref.grad, atol=1e-5)
    assert torch.allclose(x_f.grad, x_ref.grad, rtol=1e-4, atol=1e-5 * float(x_ref.grad.abs().max()))


def test_fused_kernel_handles_empty_and_noncontiguous(kernel):
    layout = HashGridLayout.from_config(3, small_config())
    meta = hash_grid_cpu.GridMeta(layout)
    params = torch.randn(layout.n_params).requires_grad_(True)
    empty = hash_grid_cpu.hash_grid_fused_cpu(torch.zeros(0, 3), params, kernel, meta)
    assert empty.shape == (0, layout.n_output_dims)
    empty.sum().backward()
    assert params.grad is not None and float(params.grad.abs().sum()) == 0.0
    x = torch.rand(3, 50).t()  # non-contiguous, float32
    ref = hash_grid_reference(x.contiguous(), params.detach(), layout)
    assert torch.allclose(hash_grid_cpu.hash_grid_fused_cpu(x, params.detach(), kernel, meta), ref, atol=1e-6)


def test_encoding_backends_agree_and_share_layout(kernel):
    torch.manual_seed(0)
    fused = HashGridEncoding(3, {**small_config(), "backend": "cpu_fused"})
    ref = HashGridEncoding(3, {**small_config(), "backend": "torch"})
    assert fused.active_backend == "cpu_fused" and ref.active_backend == "torch"
    load_tcnn_params(ref, fused.encoding.params.detach())
    assert list(fused.state_dict()) == list(ref.state_dict()) == ["encoding.params"]
    x = torch.rand(64, 3)
    assert torch.allclose(fused(x), ref(x), atol=1e-6)
    with pytest.raises(ValueError, match="layout needs"):
        load_tcnn_params(ref, torch.zeros(7))


def test_progressive_band_masks_levels():
    cfg = {**small_config(otype="ProgressiveBandHashGrid"), "start_level": 2, "start_step": 10,
           "update_steps": 5, "backend": "torch"}
    enc = HashGridEncoding(3, cfg)
    with torch.no_grad():
        enc.encoding.params.fill_(1.0)
    x = torch.rand(4, 3)
    assert torch.count_nonzero(enc(x)[0]) == 2 * 2
    enc.do_update_step(0, 21)  # 2 + (21 - 10) // 5 = 4 levels
    assert torch.count_nonzero(enc(x)[0]) == 4 * 2
    enc.do_update_step(0, 10_000)
    assert torch.count_nonzero(enc(x)[0]) == 6 * 2
    with pytest.raises(ValueError, match="start_level"):
        HashGridEncoding(3, {**small_config(otype="ProgressiveBandHashGrid"), "backend": "torch"})


def test_backend_errors_are_clear():
    with pytest.raises(ValueError, match="Unknown hash-grid backend"):
        HashGridEncoding(3, {**small_config(), "backend": "cuda_magic"})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="tinycudann"):
            HashGridEncoding(3, {**small_config(), "backend": "tcnn"})
    with pytest.raises(ValueError, match="Linear"):
        HashGridEncoding(3, {**small_config(), "interpolation": "Smoothstep"})
    with pytest.raises(ValueError, match="n_features_per_level"):
        HashGridEncoding(3, small_config(n_features_per_level=3))


def test_kernel_build_failure_falls_back_to_reference(monkeypatch):
    monkeypatch.setattr(hash_grid_cpu.kernel, "lib", None)
    monkeypatch.setattr(hash_grid_cpu.kernel, "attempted", False)
    monkeypatch.setattr(hash_grid_cpu.kernel, "error", None)

    def broken():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(hash_grid_cpu, "_compile", broken)
    enc = HashGridEncoding(3, {**small_config(), "backend": "cpu_fused"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = enc(torch.rand(5, 3))
    assert out.shape == (5, 12)
    assert enc.active_backend == "torch"
    assert any("no compiler" in str(w.message) for w in caught)
