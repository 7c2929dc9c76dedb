import torch

from dlrm.modules import CrossInteraction, DotInteraction, mlp


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
