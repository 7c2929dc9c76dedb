"""The Triton forward kernel of LSH attention against the PyTorch path (same numbers).

On a CUDA device it runs compiled. Without one it runs on CPU in Triton's interpreter:
``TRITON_INTERPRET=1`` only takes effect if set before triton is first imported, so
``test_kernel_in_triton_interpreter`` re-runs this file in a fresh subprocess with it set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpu_ops.lsh_attention import lsh_attention, random_rotations

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DEVICES = ["cpu"] if INTERPRETING else [
    pytest.param("cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device"),
    ]),
]
CASES = [   # (N, L, d, dv, rounds, buckets, chunk, padded, dtype): several chunks, one, two, odd sizes
    (2, 23, 5, 3, 3, 4, 4, True, torch.float64),
    (1, 16, 8, 8, 2, 2, 16, False, torch.float32),
    (2, 14, 4, 6, 1, 6, 7, True, torch.float32),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_kernel_matches_torch_path(device, case):
    N, L, d, dv, rounds, buckets, chunk, padded, dtype = case
    g = torch.Generator().manual_seed(L)
    qk = torch.randn(N, L, d, generator=g, dtype=dtype)
    v = torch.randn(N, L, dv, generator=g, dtype=dtype)
    mask = torch.ones(N, L, dtype=torch.bool)
    if padded:
        mask[0, L // 2:] = False
        mask[-1, :] = N == 1
    rot = random_rotations(d, rounds, buckets, generator=g, dtype=dtype)
    qk, v, mask, rot = qk.to(device), v.to(device), mask.to(device), rot.to(device)
    for dedupe in (True, False):
        kw = dict(rotations=rot, chunk_size=chunk, dedupe=dedupe)
        ref = lsh_attention(qk, v, mask, backend="torch", **kw)
        got = lsh_attention(qk, v, mask, backend="triton", **kw)
        torch.testing.assert_close(got, ref)


def test_triton_backend_refuses_gradients():
    qk = torch.randn(1, 8, 4, requires_grad=True)
    with pytest.raises(ValueError, match="no backward"):
        lsh_attention(qk, qk.detach(), rotations=random_rotations(4, 1, 2), chunk_size=4, backend="triton")


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETING, reason="this process is the interpreter run")
def test_kernel_in_triton_interpreter():
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x",
           "-p", "no:cacheprovider", "-k", "test_kernel_matches_torch_path"]
    try:
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True,
                             timeout=300)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"interpreter run failed:\n{err.stdout}\n{err.stderr}")
    # all three cpu cases ran in the subprocess, none skipped
    assert "3 passed" in res.stdout and "skipped" not in res.stdout, res.stdout
