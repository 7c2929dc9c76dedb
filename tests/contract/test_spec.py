import numpy as np
import pandas as pd
import pytest

from contract.spec import DenseFeature, FeatureSpec, ModelInput, SparseFeature

SPEC = FeatureSpec(
    dense=(DenseFeature("price", "log1p"), DenseFeature("rate")),
    sparse=(SparseFeature("user", 100), SparseFeature("query", 50, multi_hot=True), SparseFeature("item", 10)),
)


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "price": [0.5, 1.0, 2.0],
        "rate": [0.1, 0.2, 0.3],
        "user": [3, 99, 0],
        "query": [[1, 2], [], [49]],
        "item": [9, 0, 5],
        "purchased": [1, 0, 1],
        "event_id": ["a", "b", "c"],
    })


def test_from_frame_bags_in_sample_major_order():
    mi = ModelInput.from_frame(frame(), SPEC)
    assert mi.dense.shape == (3, 2) and mi.dense.dtype == np.float32
    bags = [mi.sparse_values[mi.sparse_offsets[j]: mi.sparse_offsets[j + 1]].tolist() for j in range(9)]
    assert bags == [[3], [1, 2], [9], [99], [], [0], [0], [49], [5]]
    assert mi.labels.tolist() == [1.0, 0.0, 1.0]


def test_slice_rebases_offsets():
    mi = ModelInput.from_frame(frame(), SPEC)
    part = mi.slice(1, 3, num_tables=3)
    assert part.sparse_offsets[0] == 0 and part.sparse_offsets[-1] == len(part.sparse_values)
    assert part.sparse_values.tolist() == [99, 0, 0, 49, 5]
    assert part.labels.tolist() == [0.0, 1.0]


def test_spec_round_trip(tmp_path):
    SPEC.save(tmp_path / "spec.json")
    assert FeatureSpec.load(tmp_path / "spec.json") == SPEC


def test_out_of_range_ids_and_missing_columns_are_named():
    bad = frame().assign(item=[9, 10, 0])
    with pytest.raises(ValueError, match="'item'"):
        ModelInput.from_frame(bad, SPEC)
    with pytest.raises(ValueError, match="rate"):
        ModelInput.from_frame(frame().drop(columns="rate"), SPEC)
