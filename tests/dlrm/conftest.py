"""Tiny model-ready data with a planted, learnable signal, shared by the dlrm tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from dlrm.synthetic import PLANTED_SPEC, planted_frame
from contract.spec import FeatureSpec


@pytest.fixture
def spec() -> FeatureSpec:
    return PLANTED_SPEC


@pytest.fixture
def make_frame() -> Callable[[int, int], pd.DataFrame]:
    return planted_frame


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models here run fastest on one thread (and do not fight other processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
