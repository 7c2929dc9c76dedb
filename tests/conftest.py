"""Shared fixtures. Heavy libraries are imported inside the fixtures that need them."""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("FEAST_USAGE", "False")
