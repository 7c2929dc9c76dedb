"""The Triton kernels (forward, atomic backward, fused SGD) against the PyTorch reference.

On a CUDA device they run compiled. Without one they run on CPU in Triton's interpreter:
``TRITON_INTERPRET=1`` only takes effect if set before triton is first imported, so
``test_kernels_in_triton_interpreter`` re-runs this file in a fresh subprocess with it set
(the kernel cases below then run on ``cpu``); the current process stays untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_ops import robe_lookup_reference

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DEVICES = ["cpu"] if INTERPRETING else [
    pytest.param("cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device"),
    ]),
]
_HC = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@settings(max_examples=15, deadline=None, suppress_health_check=_HC)
@given(data=st.data())
def test_kernels_match_reference(device, dtype, robe_cases, data):
    from gpu_ops.robe.kernel import (
        robe_backward_triton, robe_forward_triton, robe_sgd_update_triton,
    )

    case = data.draw(robe_cases)
    weight, ids, offsets, table_offsets = case.tensors(device, dtype)
    a, b, c = case.abc
    values = ids.reshape(-1)
    args = (values, offsets, table_offsets)
    num_tables = len(case.sizes)

    w_ref = weight.clone().requires_grad_()
    ref = robe_lookup_reference(w_ref, ids, table_offsets=table_offsets, dim=case.dim,
                                block=case.block, hash_abc=case.abc, offsets=offsets)
    got = robe_forward_triton(weight, *args, case.dim, case.block, a, b, c)
    torch.testing.assert_close(got.view(-1, num_tables, case.dim), ref.detach())

    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(case.seed), dtype=dtype)
    grad = grad.to(device)
    ref.backward(grad)
    g2 = grad.reshape(-1, case.dim).contiguous()
    gw = robe_backward_triton(g2, *args, weight.numel(), case.dim, case.block, a, b, c)
    torch.testing.assert_close(gw, w_ref.grad)

    w = weight.clone()
    robe_sgd_update_triton(w, g2, *args, case.dim, case.block, a, b, c, 0.25)
    torch.testing.assert_close(w, weight - 0.25 * w_ref.grad)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_kernel_wide_rows_and_many_bags(device):
    """More bags than one program's tile, dim 128 with Z = 32, ragged bags up to 9 ids."""
    from gpu_ops.robe.kernel import robe_backward_triton, robe_forward_triton

    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([1000, 3, 2**40])
    table_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes[:-1].cumsum(0)])
    num_bags, dim, block = 3 * 40, 128, 32
    lengths = torch.randint(0, 10, (num_bags,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    t = torch.arange(num_bags).repeat_interleave(lengths) % 3
    values = (torch.rand(int(offsets[-1]), generator=gen, dtype=torch.float64) * sizes[t]).long()
    weight = torch.randn(5000, generator=gen)
    abc = (1234567, 7654321, 42)
    ref_w = weight.clone().requires_grad_()
    ref = robe_lookup_reference(ref_w, values, table_offsets=table_offsets, dim=dim, block=block,
                                hash_abc=abc, offsets=offsets)
    ref.square().sum().backward()
    dev = torch.device(device)
    got = robe_forward_triton(weight.to(dev), values.to(dev), offsets.to(dev), table_offsets.to(dev),
                              dim, block, *abc)
    torch.testing.assert_close(got.cpu().view(-1, 3, dim), ref.detach())
    gw = robe_backward_triton((2 * ref.detach()).reshape(-1, dim).to(dev), values.to(dev),
                              offsets.to(dev), table_offsets.to(dev), 5000, dim, block, *abc)
    torch.testing.assert_close(gw.cpu(), ref_w.grad)


@pytest.mark.parametrize("mode", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_sparse_update_kernel_matches_the_cpu_update(device, mode):
    """The fused Triton optimizer step on distinct slots against the PyTorch CPU step, on the
    slot gradients of a real batch (windows overlapping on a small array), two steps."""
    from gpu_ops.robe.optim import robe_sparse_update_
    from gpu_ops.robe.sparse import robe_slot_gradients

    gen = torch.Generator().manual_seed(1)
    table_offsets = torch.tensor([0, 50, 2**35])
    num_floats, dim, block, abc = 700, 24, 8, (99991, 12345, 678)
    dev = torch.device(device)
    weight = torch.randn(num_floats, generator=gen)
    row = 5
    state = torch.rand(num_floats if mode == "adagrad" else -(-num_floats // row), generator=gen)
    w_cpu, s_cpu = weight.clone(), state.clone()
    w_dev, s_dev = weight.clone().to(dev), state.clone().to(dev)
    for _ in range(2):
        values = (torch.rand(3 * 64, generator=gen) * torch.tensor([50, 9, 2**33]).repeat(64)).long()
        grad = torch.randn(3 * 64, dim, generator=gen)
        slots, grads = robe_slot_gradients(grad, values, None, table_offsets, num_floats, dim, block, *abc)
        assert slots.numel() < 3 * 64 * dim  # windows overlap, so slots are shared
        robe_sparse_update_(w_cpu, slots, grads, lr=0.2, mode=mode, state=s_cpu, row=row, use_triton=False)
        robe_sparse_update_(w_dev, slots.to(dev), grads.to(dev), lr=0.2, mode=mode, state=s_dev, row=row,
                            use_triton=True)
    assert not torch.equal(w_cpu, weight)
    torch.testing.assert_close(w_dev.cpu(), w_cpu, rtol=1e-6, atol=1e-6)
    if mode != "sgd":
        torch.testing.assert_close(s_dev.cpu(), s_cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(INTERPRETING, reason="this process is the interpreter run")
def test_kernels_in_triton_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x",
           "-p", "no:cacheprovider", "-k", "test_kernels_match_reference or test_kernel_wide_rows or test_sparse_update_kernel"]
    try:
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True,
                             timeout=300)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"interpreter run failed:\n{err.stdout}\n{err.stderr}")
    # all six cpu cases (2 dtypes, wide rows, 3 sparse updates) ran in the subprocess, none skipped
    assert "6 passed" in res.stdout and "skipped" not in res.stdout, res.stdout


@pytest.mark.skipif(INTERPRETING, reason="the interpreter does not lower kernels")
@pytest.mark.parametrize("dim, block, dtype", [(16, 16, "fp32"), (128, 32, "fp32"), (5, 3, "fp64")])
def test_kernels_lower_to_cuda_code(dim, block, dtype):
    """Without a GPU, still compile both kernels for an sm_90 target: catches code the
    interpreter accepts but the compiler does not (types, dynamic loop bounds, atomics)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gpu_ops.robe.kernel import _robe_bwd, _robe_fwd, _tile

    bb, bd, _ = _tile(dim)
    consts = dict(PRIME=2038074743, DIM=dim, Z=block, HAS_OFFSETS=True, BLOCK_BAGS=bb, BLOCK_D=bd)
    ints = {"num_bags": "i32", "num_tables": "i32", "R": "i64", "a": "i32", "b": "i32", "c": "i32"}
    ptrs = {"values": "*i64", "offsets": "*i64", "table_offsets": "*i64"}
    fwd = {"W": f"*{dtype}", **ptrs, "out": f"*{dtype}", **ints}
    bwd = {"G": f"*{dtype}", **ptrs, "GW": f"*{dtype}", **ints, "scale": "fp32"}
    ptx = {}
    for name, fn, sig in (("fwd", _robe_fwd, fwd), ("bwd", _robe_bwd, bwd)):
        src = ASTSource(fn=fn, signature={**sig, **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
        ptx[name] = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert "ld.global" in ptx["fwd"] and "st.global" in ptx["fwd"]
    assert "red.global" in ptx["bwd"] or "atom.global" in ptx["bwd"]  # the atomic scatter


@pytest.mark.skipif(INTERPRETING, reason="the interpreter does not lower kernels")
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_fused_sparse_step_lowers_to_cuda_code(mode):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gpu_ops.robe.kernel import _robe_rowwise_accumulate, _robe_sparse_update

    sig = {"W": "*fp32", "S": "*fp32", "slots": "*i64", "grads": "*fp32", "n": "i32", "lr": "fp32",
           "eps": "fp32", "MODE": "constexpr", "ROW": "constexpr", "BLOCK": "constexpr"}
    src = ASTSource(fn=_robe_sparse_update, signature=sig,
                    constexprs={"MODE": mode, "ROW": 16, "BLOCK": 1024})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert "st.global" in ptx
    if mode == 2:
        sig = {"S": "*fp32", "slots": "*i64", "grads": "*fp32", "n": "i32", "inv_row": "fp32",
               "ROW": "constexpr", "BLOCK": "constexpr"}
        src = ASTSource(fn=_robe_rowwise_accumulate, signature=sig, constexprs={"ROW": 16, "BLOCK": 1024})
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        assert "red.global" in ptx or "atom.global" in ptx
