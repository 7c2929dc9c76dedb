"""How many CPU threads torch uses for a block of work."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Runs the block with ``n`` torch CPU threads (0 = leave torch's setting), then
    restores the previous count. On a busy machine one thread per process beats threads
    that wait on each other."""
    if n < 0:
        raise ValueError(f"threads = {n}; expected 0 (torch's default) or a positive count")
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
