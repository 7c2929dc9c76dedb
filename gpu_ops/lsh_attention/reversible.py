"""Reversible residual blocks (RevNet: Gomez et al., NeurIPS 2017, https://arxiv.org/abs/1707.04585;
used by the Reformer) whose backward recomputes activations instead of storing them.

    y1 = x1 + F(x2)          x2 = y2 - G(y1)
    y2 = x2 + G(y1)          x1 = y1 - F(x2)

:class:`ReversibleSequence` runs its blocks without recording a graph and keeps only the
last block's output; the backward pass walks the blocks in reverse, rebuilds each block's
inputs from its outputs and differentiates one block at a time, so activation memory does
not grow with depth. Random draws inside F and G (dropout, resampled LSH rotations) are
replayed from the RNG state recorded in the forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


class _RngState:
    """The CPU (and, for CUDA inputs, current device) RNG state at one point of the forward."""

    def __init__(self, x: Tensor):
        self.cpu = torch.get_rng_state()
        self.device = x.device if x.is_cuda else None
        self.cuda = torch.cuda.get_rng_state(x.device) if x.is_cuda else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class ReversibleBlock(nn.Module):
    """``(x1, x2) -> (x1 + F(x2), x2 + G(x1 + F(x2)))``; F and G take ``(x, mask)``."""

    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f, self.g = f, g

    def forward(self, x1: Tensor, x2: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y1 = x1 + self.f(x2, mask)
        return y1, x2 + self.g(y1, mask)


def _trainable(m: nn.Module) -> list[Tensor]:
    return [p for p in m.parameters() if p.requires_grad]


class _ReversibleFunction(torch.autograd.Function):
    """Forward without a graph; backward rebuilds inputs block by block (see module docstring)."""

    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor, mask: Tensor | None, blocks: Sequence[ReversibleBlock],
                *params: Tensor) -> tuple[Tensor, Tensor]:
        states = []
        with torch.no_grad():
            for blk in blocks:
                sf = _RngState(x2)
                y1 = x1 + blk.f(x2, mask)
                sg = _RngState(y1)
                x2 = x2 + blk.g(y1, mask)
                x1 = y1
                states.append((sf, sg))
        ctx.blocks, ctx.states, ctx.mask = blocks, states, mask
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1: Tensor, dy2: Tensor):
        y1, y2 = ctx.saved_tensors
        mask = ctx.mask
        grads: list[tuple[Tensor | None, ...]] = []
        for blk, (sf, sg) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            fp, gp = _trainable(blk.f), _trainable(blk.g)
            with torch.enable_grad():
                y1_ = y1.detach().requires_grad_()
                with sg.replay():
                    gy1 = blk.g(y1_, mask)
                dg = torch.autograd.grad(gy1, [y1_, *gp], dy2, allow_unused=True)
            with torch.no_grad():
                x2 = y2 - gy1
                dy1 = dy1 + dg[0]
                del gy1
            with torch.enable_grad():
                x2_ = x2.detach().requires_grad_()
                with sf.replay():
                    fx2 = blk.f(x2_, mask)
                df = torch.autograd.grad(fx2, [x2_, *fp], dy1, allow_unused=True)
            with torch.no_grad():
                x1 = y1 - fx2
                dy2 = dy2 + df[0]
                del fx2
            grads.append((*df[1:], *dg[1:]))   # this block's params in f-then-g order
            y1, y2 = x1, x2
        param_grads = [g for blk_grads in reversed(grads) for g in blk_grads]
        return (dy1, dy2, None, None, *param_grads)


class ReversibleSequence(nn.Module):
    """A stack of :class:`ReversibleBlock` s.

    Args:
        blocks: the blocks, applied in order.
        reversible: True recomputes activations in backward (memory flat in depth); False
            runs the same blocks with ordinary autograd (for comparison and tests).

    ``forward(x1, x2, mask)`` returns ``(y1, y2)`` of the last block.
    """

    def __init__(self, blocks: Sequence[ReversibleBlock], reversible: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.reversible = reversible

    def forward(self, x1: Tensor, x2: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        needs_graph = torch.is_grad_enabled() and (
            x1.requires_grad or x2.requires_grad or any(p.requires_grad for p in self.parameters()))
        if self.reversible and needs_graph:
            params = [p for blk in self.blocks for p in (*_trainable(blk.f), *_trainable(blk.g))]
            return _ReversibleFunction.apply(x1, x2, mask, list(self.blocks), *params)
        for blk in self.blocks:
            x1, x2 = blk(x1, x2, mask)
        return x1, x2
