"""The Kaggle-shaped benchmark's FLOP count, against torch's own count of a training step's matmuls."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def test_mlp_flops_are_what_a_training_step_of_the_mlps_multiplies(benchmark_module):
    from dlrm.modules import mlp

    bench = benchmark_module("kaggle_bench")
    bottom = mlp([13, *bench.BOTTOM, bench.DIM], last_activation=True)
    top = mlp([367, *bench.TOP, 1], last_activation=False)
    dense = torch.randn(8, 13)                       # data: no gradient
    z = torch.randn(8, 367, requires_grad=True)      # the interaction's output: gradient needed
    with FlopCounterMode(display=False) as counter:
        (bottom(dense).sum() + top(z).sum()).backward()
    assert counter.get_total_flops() == 8 * bench.mlp_flops(13, 367)
