"""Encodings other than the grid, MLPs and activations built from tinycudann-style configs."""
from __future__ import annotations

import math

import pytest
import torch

from threestudio.models.encodings.directional import spherical_harmonics
from threestudio.models.networks import (
    VanillaMLP,
    get_activation,
    get_encoding,
    get_mlp,
    load_tcnn_mlp_params,
    trunc_exp,
)


def test_spherical_harmonics_are_orthonormal_and_follow_tcnn_signs():
    # Monte-Carlo over the sphere: E[Y_i Y_j] * 4 pi = delta_ij for an orthonormal real SH basis
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    y = spherical_harmonics(d, 4)
    gram = (y.T @ y) / d.shape[0] * 4 * math.pi
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)
    z_axis = spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]]), 2)[0]
    assert torch.allclose(z_axis, torch.tensor([0.2820948, 0.0, 0.4886025, 0.0]), atol=1e-6)
    y_axis = spherical_harmonics(torch.tensor([[0.0, 1.0, 0.0]]), 2)[0]
    assert y_axis[1] < 0  # tcnn's sign convention: -0.4886 * y


def test_sh_encoding_maps_unit_cube_inputs():
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    assert enc.n_output_dims == 9
    dirs = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    assert torch.allclose(enc((dirs + 1) / 2), spherical_harmonics(dirs, 3), atol=1e-6)
    with pytest.raises(ValueError, match="degree"):
        get_encoding(3, {"otype": "SphericalHarmonics", "degree": 9})


def test_frequency_encoding_layout_matches_tcnn():
    enc = get_encoding(2, {"otype": "Frequency", "n_frequencies": 3})
    x = torch.tensor([[0.3, 0.7]])
    out = enc(x)[0]
    assert out.shape == (12,)
    for j in range(12):
        dim, k = j // 6, (j // 2) % 3
        expected = math.sin(2 ** k * math.pi * float(x[0, dim]) + (j % 2) * math.pi / 2)
        assert out[j].item() == pytest.approx(expected, abs=1e-5)


def test_include_xyz_prepends_scaled_input():
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 1, "include_xyz": True})
    out = enc(torch.tensor([[0.0, 0.5, 1.0]]))
    assert enc.n_output_dims == 4
    assert torch.allclose(out[0, :3], torch.tensor([-1.0, 0.0, 1.0]))


def test_vanilla_mlp_shape_keys_and_tcnn_param_mapping():
    mlp = get_mlp(32, 3, {"otype": "VanillaMLP", "n_neurons": 64, "n_hidden_layers": 2})
    assert isinstance(mlp, VanillaMLP)
    assert [k for k in mlp.state_dict()] == ["layers.0.weight", "layers.2.weight", "layers.4.weight"]
    assert all(m.bias is None for m in mlp.layers if isinstance(m, torch.nn.Linear))
    # FullyFusedMLP without tinycudann is the same network
    fused = get_mlp(32, 3, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2})
    assert isinstance(fused, VanillaMLP)
    # a tcnn parameter vector: (out, in) row-major blocks, output rows padded to 16
    w0, w1, w2 = torch.randn(64, 32), torch.randn(64, 64), torch.randn(3, 64)
    w2_padded = torch.zeros(16, 64)
    w2_padded[:3] = w2
    flat = torch.cat([w0.reshape(-1), w1.reshape(-1), w2_padded.reshape(-1)])
    load_tcnn_mlp_params(mlp, flat)
    x = torch.randn(5, 32)
    expected = torch.relu(torch.relu(x @ w0.T) @ w1.T) @ w2.T
    assert torch.allclose(mlp(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        load_tcnn_mlp_params(mlp, flat[:100])


def test_activations_and_errors():
    x = torch.tensor([-1.0, 0.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    assert torch.allclose(y, torch.exp(x.detach()))
    assert x.grad[2].item() == pytest.approx(math.exp(15), rel=1e-5)  # gradient clamped at exp(15)
    assert get_activation("softplus")(torch.tensor(0.0)).item() == pytest.approx(math.log(2))
    assert get_activation(None)(x) is x
    with pytest.raises(ValueError, match="Unknown activation"):
        get_activation("not_an_activation")
    with pytest.raises(ValueError, match="Unknown MLP otype"):
        get_mlp(3, 3, {"otype": "ResNet"})
    with pytest.raises(ValueError, match="Unknown encoding otype"):
        get_encoding(3, {"otype": "Hashgrid"})


def test_chunked_mlp_matches_layerwise_graph_including_double_backward():
    torch.manual_seed(0)
    mlp = get_mlp(8, 3, {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 2})
    lift = torch.randn(3, 8)
    x0 = torch.randn(50, 3)

    def run(chunk: int):
        mlp.chunk_size = chunk
        mlp.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        y = mlp(torch.sin(x @ lift))
        # analytic-normal-like: a loss on d(output)/d(input) needs second derivatives through the MLP
        gx = torch.autograd.grad(y.sum(), x, create_graph=True)[0]
        ((gx ** 2).sum() + (y ** 2).sum()).backward()
        return y.detach(), gx.detach(), [p.grad.clone() for p in mlp.parameters()]

    plain, chunked = run(0), run(7)
    assert torch.allclose(plain[0], chunked[0], atol=1e-6)
    assert torch.allclose(plain[1], chunked[1], atol=1e-5)
    for a, b in zip(plain[2], chunked[2]):
        assert torch.allclose(a, b, atol=1e-5)
    # first-order only (the fast path): same gradients
    mlp.chunk_size = 7
    mlp.zero_grad(set_to_none=True)
    x = torch.randn(40, 8, requires_grad=True)
    mlp(x).sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()] + [x.grad.clone()]
    mlp.zero_grad(set_to_none=True)
    x.grad = None
    mlp.chunk_size = 0
    mlp(x).sum().backward()
    for a, b in zip(grads, [p.grad for p in mlp.parameters()] + [x.grad]):
        assert torch.allclose(a, b, atol=1e-5)
