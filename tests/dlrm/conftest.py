"""Tiny model-ready data with a planted, learnable signal, shared by the dlrm tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from dlrm.synthetic import PLANTED_SPEC, planted_frame
from features.spec import FeatureSpec


@pytest.fixture
def spec() -> FeatureSpec:
    return PLANTED_SPEC


@pytest.fixture
def make_frame() -> Callable[[int, int], pd.DataFrame]:
    return planted_frame
