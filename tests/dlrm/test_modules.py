import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm.modules import CrossInteraction, DotInteraction, dot_interaction_reference, mlp


def test_dot_interaction_is_the_strict_lower_triangle():
    dense, sparse = torch.randn(3, 4), torch.randn(3, 2, 4)
    out = DotInteraction(3)(dense, sparse)
    x = torch.cat([dense[:, None], sparse], 1)
    want = torch.stack([(x[:, i] * x[:, j]).sum(1) for i in range(3) for j in range(i)], 1)
    torch.testing.assert_close(out, torch.cat([dense, want], 1))


def test_cross_layers_keep_the_width_and_start_from_x0():
    dense, sparse = torch.randn(5, 4), torch.randn(5, 3, 4)
    cross = CrossInteraction(16, num_layers=2, rank=3)
    out = cross(dense, sparse)
    assert out.shape == (5, 16)
    for layer in cross.layers:  # zero cross weights: every layer is the identity on x0
        for p in layer.parameters():
            torch.nn.init.zeros_(p)
    torch.testing.assert_close(cross(dense, sparse), torch.cat([dense, sparse.flatten(1)], 1))


def test_mlp_widths():
    net = mlp([3, 8, 2], last_activation=False)
    assert net(torch.randn(4, 3)).shape == (4, 2) and not isinstance(net[-1], torch.nn.ReLU)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 9), f=st.integers(2, 8), d=st.integers(1, 6), dense_grad=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_dot_interaction_gradients_equal_plain_autograd(b, f, d, dense_grad, seed):
    """The interaction's own backward (one bmm of the mirrored pair gradients) gives the
    gradients autograd gives through the plain ops, for every input that needs one."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_(dense_grad)
    sparse = torch.randn(b, f - 1, d, generator=g, dtype=torch.float64).requires_grad_()
    out = DotInteraction(f)(dense, sparse)
    want = dot_interaction_reference(dense, sparse)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    inputs = (dense, sparse) if dense_grad else (sparse,)
    got = torch.autograd.grad(out, inputs, grad)
    ref = torch.autograd.grad(want, inputs, grad)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_dot_interaction_float32_kaggle_shape_matches_plain_autograd():
    torch.manual_seed(0)
    dense, sparse = torch.randn(64, 16, requires_grad=True), torch.randn(64, 26, 16, requires_grad=True)
    out, want = DotInteraction(27)(dense, sparse), dot_interaction_reference(dense, sparse)
    torch.testing.assert_close(out, want)
    grad = torch.randn(out.shape)
    for x, y in zip(torch.autograd.grad(out, (dense, sparse), grad), torch.autograd.grad(want, (dense, sparse), grad)):
        torch.testing.assert_close(x, y)


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 20), min_size=2, max_size=5), last=st.booleans(), b=st.integers(1, 9),
       input_grad=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_mlp_single_node_equals_layer_by_layer_autograd(widths, last, b, input_grad, seed):
    """One autograd node for the whole MLP: the same output and the same gradients as the
    layers run one by one (odd and multiple-of-8 widths both)."""
    torch.manual_seed(seed)
    net = mlp(widths, last_activation=last).double()
    x = torch.randn(b, widths[0], dtype=torch.float64, requires_grad=input_grad)
    out = net(x)
    assert out.grad_fn is not None and "MLPFunction" in type(out.grad_fn).__name__
    want = torch.nn.Sequential.forward(net, x)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    grad = torch.randn(out.shape, dtype=torch.float64)
    inputs = [*net.parameters(), *([x] if input_grad else [])]
    for got, ref in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_mlp_kaggle_widths_float32_match_and_keep_the_state_dict():
    torch.manual_seed(0)
    net = mlp([367, 512, 256, 1], last_activation=False)
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    x = torch.randn(64, 367, requires_grad=True)
    out, want = net(x), torch.nn.Sequential.forward(net, x)
    torch.testing.assert_close(out, want)
    params = [*net.parameters(), x]
    for got, ref in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(want.sum(), params)):
        torch.testing.assert_close(got, ref)
    with torch.no_grad():  # inference runs layer by layer
        torch.testing.assert_close(net(x), want)
