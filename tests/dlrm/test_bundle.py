import json

import numpy as np
import pytest
import torch

from dlrm import DLRM, EmbeddingConfig, ModelConfig, load_model, predict, save_model
from contract.spec import FeatureSpec, ModelInput


@pytest.mark.parametrize("backend,interaction", [("robe", "dot"), ("full", "dcn"), ("qr", "dot"),
                                                 ("hashing", "dcn")])
def test_save_load_predict_round_trip(tmp_path, spec, make_frame, backend, interaction):
    torch.manual_seed(0)
    cfg = ModelConfig(embedding=EmbeddingConfig(backend=backend, dim=8, compression=4, block=4, seed=5),
                      bottom_mlp=(16,), top_mlp=(16,), interaction=interaction, dcn_layers=2, dcn_rank=8)
    model = DLRM(cfg, len(spec.dense), spec.table_sizes)
    inputs = ModelInput.from_frame(make_frame(300, 9), spec)
    before = predict(model, inputs, batch_size=64)
    assert before.shape == (300,) and np.all((before > 0) & (before < 1))
    save_model(model, tmp_path / "m", spec=spec, config={"seed": 1}, metrics={"auc": 0.5})
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["config"] == {"seed": 1} and doc["metrics"] == {"auc": 0.5}
    loaded, cfg_dict = load_model(tmp_path / "m")
    assert not loaded.training
    assert FeatureSpec.from_dict(cfg_dict["feature_spec"]) == spec
    assert cfg_dict["embedding"]["bytes"] == model.embedding_bytes
    if backend == "robe":
        A, B, C = model.embedding.hash_abc
        h = cfg_dict["embedding"]["hash"]
        assert (h["A"], h["B"], h["C"], h["block"], h["size"]) == (A, B, C, 4, model.embedding.size)
    np.testing.assert_array_equal(predict(loaded, inputs, batch_size=1000), before)
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 length + JSON header
    assert json.loads(raw[8:8 + header_len])["__metadata__"]["format"] == "robeflow.dlrm.v1"


def test_load_rejects_a_missing_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
