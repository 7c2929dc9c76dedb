"""Categorisation: stable 64-bit hash ids, in range, the same in every process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from features.categorize import MISSING, hash_bags, hash_ids, stable_hash64

VALUES = ["mobile", "desktop", "tablet", "ünïcode", "", "mobile"]


def test_ids_are_blake2b_of_feature_equals_value_mod_size():
    ids = hash_ids(VALUES, "device", 1000)
    for v, i in zip(VALUES, ids):
        h = int.from_bytes(hashlib.blake2b(f"device={v}".encode(), digest_size=8).digest(), "little")
        assert i == h % 1000
    assert ids.dtype == np.int64 and ids[0] == ids[-1]


def test_ids_depend_on_the_feature_name_and_missing_values_hash_as_a_token():
    a, b = hash_ids(["x"] * 1, "brand", 2**40), hash_ids(["x"], "country", 2**40)
    assert a[0] != b[0]
    missing = hash_ids(pd.Series([None, pd.NA, np.nan], dtype=object), "brand", 10**6)
    assert (missing == hash_ids([MISSING], "brand", 10**6)[0]).all()


@pytest.mark.parametrize("size", [1, 7, 64, 2**31 - 1])
def test_ids_lie_in_the_table(size):
    ids = hash_ids([f"v{i}" for i in range(500)], "item", size)
    assert ids.min() >= 0 and ids.max() < size


def test_bad_table_size_is_named():
    with pytest.raises(ValueError, match="'item'"):
        hash_ids(["a"], "item", 0)


def test_bags_keep_order_and_length():
    bags = hash_bags(pd.Series([["red", "shoe"], [], ["shoe"]]), "query", 10**6)
    red, shoe = hash_ids(["red", "shoe"], "query", 10**6)
    assert [b.tolist() for b in bags] == [[red, shoe], [], [shoe]]


def test_ids_are_the_same_in_another_process():
    """A fresh interpreter with a different str hash seed computes the same ids."""
    code = ("import json, sys; from features.categorize import hash_ids; "
            "print(json.dumps(hash_ids(json.loads(sys.argv[1]), 'user', 500000).tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(VALUES)], check=True,
                         capture_output=True, text=True, env=env)
    assert json.loads(out.stdout) == hash_ids(VALUES, "user", 500000).tolist()


def test_stable_hash64_is_unsigned_64_bit():
    h = stable_hash64(["a", "b"])
    assert h.dtype == np.uint64 and h[0] != h[1]
