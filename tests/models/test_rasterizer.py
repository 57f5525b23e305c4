"""Differentiable rasterizer: the C++ CPU kernel equals the pure-PyTorch reference; gradients match finite
differences, including silhouette gradients through antialias."""
from __future__ import annotations

import pytest
import torch

from threestudio.models.rasterization import DifferentiableRasterizer, available_backends, construct_topology
from threestudio.models.rasterization import cpu_kernel, reference


@pytest.fixture(scope="module")
def cpu():
    if cpu_kernel.load_kernel() is None:
        pytest.fail(f"the CPU rasterizer kernel did not build: {cpu_kernel.kernel.error}")
    return DifferentiableRasterizer("cpu")


@pytest.fixture(scope="module")
def ref():
    return DifferentiableRasterizer("torch")


def random_scene(seed: int = 0, batch: int = 2, n_vert: int = 60, n_faces: int = 40):
    """Overlapping random triangles in front of the camera (w in [1, 1.5], z/w in [-0.4, 0.4])."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(batch, n_vert, 4, generator=gen) * 1.6 - 0.8
    pos[..., 3] = 1.0 + torch.rand(batch, n_vert, generator=gen) * 0.5
    pos[..., 2] = (torch.rand(batch, n_vert, generator=gen) * 0.8 - 0.4) * pos[..., 3]
    pos[..., :2] *= pos[..., 3:]
    tri = torch.randint(0, n_vert, (n_faces, 3), generator=gen, dtype=torch.int32)
    return pos, tri


def test_available_backends_reports_cpu_kernel(cpu):
    backends = available_backends()
    assert backends["cpu"] is True and backends["torch"] is True and backends["cpu_error"] is None
    if not torch.cuda.is_available():
        assert backends["nvdiffrast"] is False
        with pytest.raises(ValueError, match="nvdiffrast"):
            DifferentiableRasterizer("nvdiffrast")
    with pytest.raises(ValueError, match="Unknown rasterizer backend"):
        DifferentiableRasterizer("opengl")


def test_rasterize_single_triangle_values(cpu):
    # a triangle with its first vertex on the left, the second on the right, the third at the top
    pos = torch.tensor([[[-0.8, -0.8, 0.2, 1.0], [0.8, -0.8, 0.2, 1.0], [0.0, 0.8, 0.2, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast = cpu.rasterize(pos, tri, (16, 16))
    # pixel (px=8, py=2) is near the bottom edge (row 0 is NDC y = -1), right of centre
    u, v, d, i = rast[0, 2, 8].tolist()
    x, y = (2 * 8 + 1) / 16 - 1, (2 * 2 + 1) / 16 - 1
    w2 = (y + 0.8) / 1.6  # weight of the top vertex grows with y
    w1 = (x + 0.8 - 0.8 * w2) / 1.6
    assert i == 1 and d == pytest.approx(0.2) and v == pytest.approx(w1, abs=1e-6)
    assert u == pytest.approx(1 - w1 - w2, abs=1e-6)
    assert rast[0, 15, 0, 3] == 0 and rast[0, 0, 0, 3] == 0  # corners are empty


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_rasterize_equals_reference(cpu, ref, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pos, tri = random_scene()
        a = cpu.rasterize(pos, tri, (40, 48))
        b = ref.rasterize(pos, tri, (40, 48))
    finally:
        torch.set_num_threads(previous)
    assert (a[..., 3] > 0).float().mean() > 0.3  # the scene covers many pixels, with overlaps
    assert torch.equal(a[..., 3], b[..., 3])
    torch.testing.assert_close(a[..., :3], b[..., :3], atol=1e-6, rtol=0)


def test_rasterize_depth_test_and_perspective(cpu, ref):
    # two overlapping triangles: the nearer one (smaller z/w) wins wherever both cover a pixel
    pos = torch.tensor([[[-0.9, -0.9, 0.5, 1.0], [0.9, -0.9, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0],
                         [-1.8, 1.8, -0.4, 2.0], [1.8, 1.8, -0.4, 2.0], [0.0, -1.8, -0.4, 2.0]]])
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    rast = cpu.rasterize(pos, tri, (32, 32))
    both = (ref.rasterize(pos[:, :3], tri[:1], (32, 32))[..., 3] > 0) & \
        (ref.rasterize(pos[:, 3:], tri[:1], (32, 32))[..., 3] > 0)
    assert both.any() and (rast[..., 3][both] == 2).all()
    torch.testing.assert_close(rast[..., 2][both], torch.full_like(rast[..., 2][both], -0.2))


def test_rasterize_gradients_match_reference_and_finite_differences(cpu, ref):
    pos, tri = random_scene(1)
    weights = torch.randn(2, 40, 48, 4, generator=torch.Generator().manual_seed(3))
    weights[..., 3] = 0
    p1, p2 = pos.clone().requires_grad_(True), pos.clone().requires_grad_(True)
    (cpu.rasterize(p1, tri, (40, 48)) * weights).sum().backward()
    (ref.rasterize(p2, tri, (40, 48)) * weights).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, atol=2e-4, rtol=1e-4)

    # central differences on one large triangle's interior pixels (ids do not change)
    pos = torch.tensor([[[-0.7, -0.6, 0.1, 1.2], [0.8, -0.7, 0.3, 1.0], [0.1, 0.9, -0.2, 1.4]]], dtype=torch.float32)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast = cpu.rasterize(pos, tri, (24, 24))
    inner = torch.nn.functional.max_pool2d(-(rast[..., 3] == 0).float()[:, None], 3, 1, 1)[:, 0] == 0
    w = torch.randn(1, 24, 24, 4, generator=torch.Generator().manual_seed(4)) * inner[..., None]
    w[..., 3] = 0
    p = pos.clone().requires_grad_(True)
    (cpu.rasterize(p, tri, (24, 24)) * w).sum().backward()
    eps = 1e-3
    for vi, ci in [(0, 0), (1, 1), (2, 2), (2, 3), (0, 3)]:
        plus, minus = pos.clone(), pos.clone()
        plus[0, vi, ci] += eps
        minus[0, vi, ci] -= eps
        fd = ((cpu.rasterize(plus, tri, (24, 24)) - cpu.rasterize(minus, tri, (24, 24))) * w).sum() / (2 * eps)
        assert float(p.grad[0, vi, ci]) == pytest.approx(float(fd), rel=2e-2, abs=2e-2)


def test_interpolate_equals_reference_with_gradients(cpu, ref):
    pos, tri = random_scene(2)
    rast = cpu.rasterize(pos, tri, (40, 48))
    attr = torch.randn(60, 5)
    out = {}
    for name, r in (("cpu", cpu), ("ref", ref)):
        a = attr.clone().requires_grad_(True)
        rs = rast.clone().requires_grad_(True)
        o = r.interpolate(a, rs, tri)
        (o * torch.linspace(-1, 1, 5)).sum().backward()
        out[name] = (o.detach(), a.grad, rs.grad[..., :2])
    for x, y in zip(out["cpu"], out["ref"]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert (out["cpu"][0][rast[..., 3] == 0] == 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_antialias_equals_reference_with_gradients(cpu, ref, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pos, tri = random_scene(5)
        rast = ref.rasterize(pos, tri, (40, 48))
        topology = construct_topology(tri)
        assert torch.equal(cpu.construct_topology(tri), topology)
        color = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(6))
        g = torch.randn(2, 40, 48, 3, generator=torch.Generator().manual_seed(7))
        results = []
        for r in (cpu, ref):
            c, p = color.clone().requires_grad_(True), pos.clone().requires_grad_(True)
            out = r.antialias(c, rast, p, tri, topology)
            (out * g).sum().backward()
            results.append((out.detach(), c.grad, p.grad))
    finally:
        torch.set_num_threads(previous)
    (a, ca, pa), (b, cb, pb) = results
    assert (a != color).any(dim=-1).float().mean() > 0.05  # silhouettes were blended
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(ca, cb, atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(pa, pb, atol=1e-3, rtol=1e-4)
    assert pa.abs().sum() > 0


def _coverage(r: DifferentiableRasterizer, pos: torch.Tensor, tri: torch.Tensor, res: int) -> torch.Tensor:
    rast = r.rasterize(pos, tri, (res, res))
    white = (rast[..., 3:] > 0).float()
    return r.antialias(white, rast, pos, tri).sum()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_silhouette_gradient_of_a_moving_triangle(backend, cpu):
    """The antialiased coverage of a white triangle on black tracks its area: its gradient with respect to
    a vertex moving sideways matches central differences and the analytic area derivative."""
    r = DifferentiableRasterizer(backend)
    res = 32
    base = torch.tensor([[[-0.6, -0.5, 0.0, 1.0], [0.5, -0.6, 0.0, 1.0], [0.1, 0.62, 0.0, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    p = base.clone().requires_grad_(True)
    _coverage(r, p, tri, res).backward()
    grad_x = float(p.grad[0, 2, 0])
    h = 1.0 / res  # half a pixel in NDC
    values = []
    for s in (-h, h):
        moved = base.clone()
        moved[0, 2, 0] += s
        values.append(float(_coverage(r, moved, tri, res)))
    fd = (values[1] - values[0]) / (2 * h)
    # area in pixels = |cross| / 2 * (res / 2)^2; d/dx of the top vertex: (y0 - y1) / 2 * (res/2)^2
    analytic = (base[0, 0, 1] - base[0, 1, 1]).item() / 2 * (res / 2) ** 2
    assert grad_x != 0
    assert grad_x == pytest.approx(fd, rel=0.15, abs=2.0)
    assert grad_x == pytest.approx(analytic, rel=0.25, abs=2.0)
    # without antialias the coverage has no gradient at all with respect to the vertex positions
    p2 = base.clone().requires_grad_(True)
    rast = r.rasterize(p2, tri, (res, res))
    assert not (rast[..., 3:] > 0).float().requires_grad


def test_texture_bilinear_wrap_and_clamp(cpu):
    tex = torch.arange(12, dtype=torch.float32).view(1, 3, 4, 1)  # rows of 4 texels
    # texel centres return the texel; halfway between columns the mean
    uv = torch.tensor([[[[0.125, 0.5], [0.25, 0.5], [0.875, 1 / 6]]]])
    out = cpu.texture(tex, uv, boundary_mode="clamp")[0, 0, :, 0]
    torch.testing.assert_close(out, torch.tensor([4.0, 4.5, 3.0]))
    # wrap: u = 1.0 is between the last and the first column of the row
    wrapped = cpu.texture(tex, torch.tensor([[[[1.0, 0.5]]]]), boundary_mode="wrap")[0, 0, 0, 0]
    assert float(wrapped) == pytest.approx((4 + 7) / 2)
    uv_g = uv.clone().requires_grad_(True)
    cpu.texture(tex, uv_g, boundary_mode="clamp").sum().backward()
    assert uv_g.grad[0, 0, 1, 0] == pytest.approx(4.0)  # d/du at a texel boundary: one step over 1/4
    with pytest.raises(ValueError, match="boundary_mode"):
        cpu.texture(tex, uv, boundary_mode="mirror")


def test_rejects_bad_shapes(cpu):
    with pytest.raises(ValueError, match=r"\(B, V, 4\)"):
        cpu.rasterize(torch.zeros(3, 4), torch.zeros(1, 3, dtype=torch.int32), (8, 8))
    with pytest.raises(ValueError, match="integer tensor"):
        cpu.rasterize(torch.zeros(1, 3, 4), torch.zeros(1, 3), (8, 8))
