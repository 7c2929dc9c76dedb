"""The ``generate`` section of params.yaml: the world's size, the planted model's knobs, drift,
corruption and the output format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd


@dataclass(frozen=True)
class GenerateConfig:
    rows: int = 600_000              # transactions (offers) to generate
    users: int = 3_000
    items: int = 1_500
    days: int = 42                   # window: [start_date, start_date + days)
    start_date: str = "2026-09-17"   # UTC
    seed: int = 7
    corrupt_fraction: float = 0.005  # share of rows broken on purpose
    drift: float = 0.0               # 0..1, strength of the shift on the last drift_days days
    drift_days: int = 4
    format: Literal["parquet", "csv", "criteo"] = "parquet"
    chunk_rows: int = 100_000        # rows per chunk and part file (bounds memory)
    base_rate: float = 0.05          # mean planted purchase probability (before repeat purchases)
    # the terms only an id (or its history) can carry; 0 switches one off
    item_taste: float = 1.5          # weight of user taste x the item's own deviation from its category
    user_taste: float = 1.0          # weight of a per-user taste vector that browsing does not reveal
    replenish: float = 1.5           # weight of re-buying a consumable bought 20-60 days earlier (0: no
                                     # repeat effect and no buy-again offers)
    user_zipf: float = 0.7           # events per user ~ 1 / rank**user_zipf (heavy users: thousands)

    def __post_init__(self) -> None:
        for name in ("rows", "users", "items", "days", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"generate.{name} = {getattr(self, name)}; expected >= 1")
        if not 0.0 <= self.corrupt_fraction <= 0.5:
            raise ValueError(f"generate.corrupt_fraction = {self.corrupt_fraction}; expected 0..0.5")
        if not 0.0 <= self.drift <= 1.0:
            raise ValueError(f"generate.drift = {self.drift}; expected 0..1")
        if not 0 <= self.drift_days <= self.days:
            raise ValueError(f"generate.drift_days = {self.drift_days}; expected 0..days ({self.days})")
        for name in ("item_taste", "user_taste", "replenish", "user_zipf"):
            if not 0.0 <= getattr(self, name) <= 5.0:
                raise ValueError(f"generate.{name} = {getattr(self, name)}; expected 0..5")
        if not 0.001 <= self.base_rate <= 0.5:
            raise ValueError(f"generate.base_rate = {self.base_rate}; expected 0.001..0.5")
        try:
            pd.Timestamp(self.start_date)
        except ValueError:
            raise ValueError(f"generate.start_date = {self.start_date!r}; expected a date like 2026-10-01") from None

    @property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The data window [start, end) in UTC."""
        start = pd.Timestamp(self.start_date, tz="UTC").normalize()
        return start, start + pd.Timedelta(days=self.days)
