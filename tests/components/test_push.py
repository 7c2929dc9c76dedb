"""robeflow push: gate, bundle contents, provenance, versions, rollback, crash safety."""

from __future__ import annotations

import json
import pickle
import shutil
import uuid

import numpy as np
import pytest
import torch
import yaml

from pipelines.cli import main
from components.push import BUNDLE_FILES, PushConfig, dvc_versions, push, rollback, sha256_file
from dlrm.bundle import WEIGHTS, load_model, predict, save_model
from dlrm.configs import EmbeddingConfig, ModelConfig
from dlrm.model import DLRM
from dlrm.synthetic import PLANTED_SPEC, planted_frame
from contract.spec import ModelInput
from serving.ranker import load_production
from model_registry.registry import POINTER, Registry

METRICS_PASSED = {"auc": 0.81, "target_auc": 0.75, "gate": "target_auc", "passed": True, "backend": "robe",
                  "logloss": 0.4, "ne": 0.9, "oracle_auc": 0.83}
# the registry's mechanics with random-weight models: the champion/challenger gate is overridden
FORCE = PushConfig(force=True)


def make_bundle(root, seed: int, passed: bool = True):
    """A small ROBE DLRM bundle (random weights from ``seed``) and its metrics.json."""
    torch.manual_seed(seed)
    cfg = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=4, block=4, seed=seed),
                      bottom_mlp=(16,), top_mlp=(16,))
    model = DLRM(cfg, len(PLANTED_SPEC.dense), PLANTED_SPEC.table_sizes)
    model_dir = root / f"model-{seed}"
    save_model(model, model_dir, spec=PLANTED_SPEC, config={"seed": seed}, metrics={"valid_auc": 0.8})
    metrics = root / f"metrics-{seed}-{passed}.json"
    metrics.write_text(json.dumps({**METRICS_PASSED, "passed": passed, "model_sha256": sha256_file(model_dir / WEIGHTS),
                                   **({} if passed else {"auc": 0.6})}))
    return model_dir, metrics


@pytest.fixture(scope="module")
def inputs() -> ModelInput:
    return ModelInput.from_frame(planted_frame(64, seed=5), PLANTED_SPEC)


@pytest.fixture(params=["dir", "memory"])
def registry_url(request, tmp_path):
    """A registry on the local disk, and one on fsspec's in-memory store (object-store stand-in)."""
    if request.param == "dir":
        yield str(tmp_path / "registry")
        return
    url = f"memory://registry-{uuid.uuid4().hex[:8]}"
    yield url
    reg = Registry(url)
    if reg.fs.exists(reg.root):
        reg.fs.rm(reg.root, recursive=True)


def test_pushed_bundle_reloads_to_the_same_predictions(tmp_path, registry_url, inputs):
    model_dir, metrics = make_bundle(tmp_path, seed=1)
    result = push(PushConfig(), model_dir, metrics, registry=registry_url)
    assert result.pushed and result.version == "v1" and result.production == "v1"
    original, _ = load_model(model_dir)
    loaded = load_production(registry_url)
    assert loaded.version == "v1"
    np.testing.assert_array_equal(predict(loaded.model, inputs), predict(original, inputs))
    # the hash constants and the feature spec travel with it
    assert loaded.doc["embedding"]["hash"] == original.embedding.hash_constants()
    assert [s["table_size"] for s in loaded.doc["feature_spec"]["sparse"]] == PLANTED_SPEC.table_sizes
    assert loaded.doc["evaluation"]["auc"] == METRICS_PASSED["auc"]


def test_bundle_holds_no_pickle_and_loads_without_it(tmp_path, monkeypatch, inputs):
    model_dir, metrics = make_bundle(tmp_path, seed=2)
    reg_dir = tmp_path / "registry"
    push(PushConfig(), model_dir, metrics, registry=str(reg_dir))
    files = sorted(p.name for p in (reg_dir / "v1").iterdir())
    assert files == sorted(BUNDLE_FILES)
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin"))]
    # safetensors: an 8-byte little-endian header length, then a JSON header (a pickle starts 0x80)
    raw = (reg_dir / "v1" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + n])["__metadata__"]["format"] == "robeflow.dlrm.v1"

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle must load without unpickling")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    loaded = load_production(str(reg_dir))
    original, _ = load_model(model_dir)
    monkeypatch.undo()
    np.testing.assert_array_equal(predict(loaded.model, inputs), predict(original, inputs))


def test_refuses_when_the_gate_failed_and_changes_nothing(tmp_path, registry_url):
    good_dir, good_metrics = make_bundle(tmp_path, seed=1)
    push(PushConfig(), good_dir, good_metrics, registry=registry_url)
    reg = Registry(registry_url)
    before = (reg.versions(), reg.pointer())
    bad_dir, bad_metrics = make_bundle(tmp_path, seed=3, passed=False)
    result = push(PushConfig(), bad_dir, bad_metrics, registry=registry_url)
    assert not result.pushed and result.gate_passed is False
    assert "gate failed" in result.reason and "0.60000" in result.reason
    assert (reg.versions(), reg.pointer()) == before


def test_cli_gate_exit_codes_and_report(tmp_path):
    model_dir, metrics = make_bundle(tmp_path, seed=3, passed=False)
    reg_dir, report = tmp_path / "registry", tmp_path / "push.json"
    args = ["push", "--model", str(model_dir), "--metrics", str(metrics), "--registry", str(reg_dir),
            "--report", str(report), "--params", str(tmp_path / "none.yaml")]
    (tmp_path / "none.yaml").write_text("{}\n")
    assert main(args) == 0
    assert json.loads(report.read_text())["pushed"] is False
    assert not reg_dir.exists() or Registry(str(reg_dir)).versions() == []
    assert main([*args, "-S", "push.fail_on_gate=true"]) == 3


def test_records_dvc_versions_or_null(tmp_path):
    model_dir, metrics = make_bundle(tmp_path, seed=4)
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {
        "cmd": "robeflow train ...",
        "deps": [{"path": "data/model_input", "hash": "md5", "md5": "0123abcd.dir"},
                 {"path": "dlrm/model.py", "md5": "ffff"}],
        "params": {"params.yaml": {"train": {"epochs": 2, "batch_size": 2048}}},
    }}}))
    reg = tmp_path / "registry"
    push(PushConfig(), model_dir, metrics, registry=str(reg), dvc_lock=lock)
    prov = json.loads((reg / "v1" / "config.json").read_text())["provenance"]
    assert prov["model_input_md5"] == "0123abcd.dir"
    assert prov["train_params"] == {"epochs": 2, "batch_size": 2048}
    card = (reg / "v1" / "MODEL_CARD.md").read_text()
    assert "0123abcd.dir" in card and "0.81000" in card and "4.0x smaller" in card
    assert dvc_versions(tmp_path / "absent.lock") == {"dvc_lock": None, "model_input_md5": None,
                                                      "train_params": None}


def test_versions_pointer_history_and_rollback(tmp_path, registry_url, inputs):
    dirs = [make_bundle(tmp_path, seed=s) for s in (1, 2, 3)]
    for k, (model_dir, metrics) in enumerate(dirs, start=1):
        assert push(FORCE, model_dir, metrics, registry=registry_url).version == f"v{k}"
    reg = Registry(registry_url)
    assert reg.versions() == ["v1", "v2", "v3"]
    assert reg.pointer()["history"] == ["v2", "v1"]
    # the same model again is not a new version
    again = push(FORCE, *dirs[2], registry=registry_url)
    assert not again.pushed and reg.versions() == ["v1", "v2", "v3"]

    assert rollback(PushConfig(), registry_url).production == "v2"
    v2_model, _ = load_model(dirs[1][0])
    np.testing.assert_array_equal(predict(load_production(registry_url).model, inputs), predict(v2_model, inputs))
    assert rollback(PushConfig(), registry_url).production == "v1"
    with pytest.raises(ValueError, match="no earlier version"):
        rollback(PushConfig(), registry_url)
    # a new push after rollbacks numbers on from the newest version
    model_dir, metrics = make_bundle(tmp_path, seed=9)
    assert push(FORCE, model_dir, metrics, registry=registry_url).version == "v4"
    assert reg.pointer()["history"] == ["v1"]


def test_cli_rollback(tmp_path):
    reg_dir = tmp_path / "registry"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"push": {"registry": str(reg_dir), "force": True}}))
    for seed in (1, 2):
        model_dir, metrics = make_bundle(tmp_path, seed=seed)
        assert main(["push", "--model", str(model_dir), "--metrics", str(metrics),
                     "--params", str(tmp_path / "p.yaml")]) == 0
    assert Registry(str(reg_dir)).production() == "v2"
    assert main(["push", "--rollback", "--params", str(tmp_path / "p.yaml")]) == 0
    assert Registry(str(reg_dir)).production() == "v1"


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["upload", "rename_bundle", "move_pointer"])
def test_a_crash_mid_push_leaves_production_intact(tmp_path, registry_url, monkeypatch, where, inputs):
    first_dir, first_metrics = make_bundle(tmp_path, seed=1)
    push(PushConfig(), first_dir, first_metrics, registry=registry_url)
    second_dir, second_metrics = make_bundle(tmp_path, seed=2)

    real_rename = Registry._rename
    if where == "upload":
        # dies after the first file of the bundle was written
        fs_cls = type(Registry(registry_url).fs)
        real_put_file = fs_cls.put_file
        calls = []

        def put_file(self, lpath, rpath, *args, **kwargs):
            calls.append(rpath)
            if len(calls) > 1:
                raise Crash("killed while uploading")
            return real_put_file(self, lpath, rpath, *args, **kwargs)

        monkeypatch.setattr(fs_cls, "put_file", put_file)
    else:
        def rename(self, src, dst, replace=False):
            if (where == "rename_bundle" and not dst.endswith(POINTER)) or \
                    (where == "move_pointer" and dst.endswith(POINTER)):
                raise Crash(f"killed at {where}")
            return real_rename(self, src, dst, replace)

        monkeypatch.setattr(Registry, "_rename", rename)
    with pytest.raises(Crash):
        push(FORCE, second_dir, second_metrics, registry=registry_url)
    monkeypatch.undo()

    reg = Registry(registry_url)
    assert reg.production() == "v1"
    assert reg.versions() == (["v1", "v2"] if where == "move_pointer" else ["v1"])
    for version in reg.versions():  # every numbered version is a complete bundle
        assert reg.files(version) == sorted(BUNDLE_FILES)
    first_model, _ = load_model(first_dir)
    np.testing.assert_array_equal(predict(load_production(registry_url).model, inputs),
                                  predict(first_model, inputs))
    # and the next push goes through
    result = push(FORCE, second_dir, second_metrics, registry=registry_url)
    assert result.pushed and reg.production() == result.version


def test_malformed_pointer_and_missing_inputs_are_named(tmp_path):
    reg_dir = tmp_path / "registry"
    reg_dir.mkdir()
    (reg_dir / POINTER).write_text('{"version": "latest"}')
    with pytest.raises(ValueError, match="malformed"):
        Registry(str(reg_dir)).production()
    with pytest.raises(FileNotFoundError, match="metrics file"):
        push(PushConfig(), make_bundle(tmp_path, seed=1)[0], tmp_path / "nope.json", registry=str(reg_dir))
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        push(PushConfig(), tmp_path / "empty", tmp_path / "nope.json", registry=str(reg_dir))
    empty = tmp_path / "empty-registry"
    with pytest.raises(FileNotFoundError, match="no production model"):
        load_production(str(empty))


# ---- provenance and champion/challenger ------------------------------------------------

def test_metrics_of_another_model_are_refused(tmp_path):
    model_a, _ = make_bundle(tmp_path, seed=1)
    _, metrics_b = make_bundle(tmp_path, seed=2)
    reg_dir = tmp_path / "registry"
    with pytest.raises(ValueError, match="metrics of another model"):
        push(PushConfig(), model_a, metrics_b, registry=str(reg_dir))
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(json.dumps(METRICS_PASSED))
    with pytest.raises(ValueError, match="names no model"):
        push(PushConfig(force=True), model_a, unnamed, registry=str(reg_dir))   # force does not skip this
    assert not reg_dir.exists() or Registry(str(reg_dir)).versions() == []


TRAIN_PARAMS = {
    "train": {
        "model": {"embedding": {"backend": "robe", "dim": 8, "compression": 4, "block": 4},
                  "bottom_mlp": [16], "top_mlp": [32]},
        "optim": {"dense_lr": 0.003, "embedding_lr": 0.1},
        "batch_size": 128, "epochs": 2, "progress": False, "threads": 1,
    },
    "evaluate": {"gate": "target_auc", "target_auc": 0.5, "threads": 1},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained model evaluated by `robeflow evaluate` (a real champion), and a random-weight
    model of the same spec (a worse challenger, its absolute gate passed by fiat)."""
    from contract.spec import FeatureSpec
    from dlrm.synthetic import write_planted_dir

    root = tmp_path_factory.mktemp("champion")
    data = root / "data/model_input"
    write_planted_dir(data, root / "data/truth")
    (root / "params.yaml").write_text(yaml.safe_dump(TRAIN_PARAMS))
    assert main(["train", "--input", str(data), "--model-out", str(root / "trained"),
                 "--checkpoints", str(root / "ckpt"), "--reports", str(root / "reports/train"),
                 "--params", str(root / "params.yaml")]) == 0
    assert main(["evaluate", "--model", str(root / "trained"), "--input", str(data),
                 "--metrics", str(root / "trained-metrics.json"), "--plots", str(root / "plots"),
                 "--predictions", str(root / "predictions"), "--params", str(root / "params.yaml")]) == 0
    spec = FeatureSpec.load(data / "feature_spec.json")
    torch.manual_seed(0)
    cfg = ModelConfig(embedding=EmbeddingConfig(backend="robe", dim=8, compression=4, block=4, seed=7),
                      bottom_mlp=(16,), top_mlp=(16,))
    save_model(DLRM(cfg, len(spec.dense), spec.table_sizes), root / "random", spec=spec, config={"seed": 7})
    (root / "random-metrics.json").write_text(json.dumps({
        **METRICS_PASSED, "model_sha256": sha256_file(root / "random" / WEIGHTS)}))
    return root


def _push_cli(project, model: str, registry, *extra) -> tuple[int, dict]:
    report = project / f"push-{uuid.uuid4().hex[:6]}.json"
    code = main(["push", "--model", str(project / model), "--metrics", str(project / f"{model}-metrics.json"),
                 "--input", str(project / "data/model_input"), "--registry", str(registry),
                 "--report", str(report), "--params", str(project / "params.yaml"), *extra])
    return code, json.loads(report.read_text())


def test_evaluate_names_the_model_it_measured(project):
    metrics = json.loads((project / "trained-metrics.json").read_text())
    assert metrics["model_sha256"] == sha256_file(project / "trained" / WEIGHTS)


def test_a_worse_challenger_is_not_published_and_push_force_publishes_it(project, tmp_path):
    reg = tmp_path / "registry"
    code, first = _push_cli(project, "trained", reg)
    assert code == 0 and first["pushed"] and first["challenger"] is None   # nothing to compare with yet
    code, report = _push_cli(project, "random", reg)
    assert code == 0 and report["pushed"] is False and report["production"] == "v1"
    ch = report["challenger"]
    assert ch["champion"] == "v1" and ch["passed"] is False and ch["rows"] == 1500
    assert ch["diff"] < 0 and ch["lo"] <= ch["diff"] <= ch["hi"] < -ch["min_delta"]
    assert ch["candidate_auc"] < ch["champion_auc"]
    assert ch["champion_auc"] == pytest.approx(json.loads((project / "trained-metrics.json").read_text())["auc"])
    assert "worse" in report["reason"] and Registry(str(reg)).versions() == ["v1"]
    # with fail_on_gate a refusal stops the pipeline
    code, _ = _push_cli(project, "random", reg, "-S", "push.fail_on_gate=true")
    assert code == 3
    # push.force publishes, and says so
    code, forced = _push_cli(project, "random", reg, "-S", "push.force=true")
    assert code == 0 and forced["pushed"] and forced["forced"] and forced["production"] == "v2"
    doc = json.loads((reg / "v2" / "config.json").read_text())
    assert doc["release"]["forced"] is True and doc["release"]["challenger"]["diff"] == pytest.approx(ch["diff"])
    card = (reg / "v2" / "MODEL_CARD.md").read_text()
    assert "## Release decision" in card and "forced by push.force" in card and f"{ch['diff']:+.5f}" in card


def test_a_better_challenger_is_published_with_its_numbers(project, tmp_path):
    reg = tmp_path / "registry"
    assert _push_cli(project, "random", reg)[1]["pushed"]
    code, report = _push_cli(project, "trained", reg)
    assert code == 0 and report["pushed"] and not report["forced"] and report["production"] == "v2"
    ch = report["challenger"]
    assert ch["passed"] is True and ch["champion"] == "v1" and ch["lo"] > 0
    card = (reg / "v2" / "MODEL_CARD.md").read_text()
    assert "against production v1 on the same 1500 test rows" in card and f"{ch['candidate_auc']:.5f}" in card


def test_without_test_rows_production_is_not_replaced(project, tmp_path):
    reg = tmp_path / "registry"
    push(PushConfig(), project / "random", project / "random-metrics.json", registry=str(reg))
    result = push(PushConfig(), project / "trained", project / "trained-metrics.json", registry=str(reg))
    assert not result.pushed and "give --input" in result.reason and Registry(str(reg)).production() == "v1"


# ---- the retrieval bundle in the version -------------------------------------------------

def _retrieval_bundle(out, feature_names=("user", "device")):
    from contract.spec import FeatureSpec, SparseFeature
    from dlrm.bundle import save_retrieval
    from dlrm.retrieval import RetrievalConfig, RetrievalModel

    spec = FeatureSpec(dense=(), sparse=tuple(SparseFeature(n, 50) for n in feature_names))
    cfg = RetrievalConfig(method="full", embedding=EmbeddingConfig(backend="robe", dim=4, compression=2, block=2),
                          tower=(8,), dim=8)
    model = RetrievalModel(spec.table_sizes, 6, cfg)
    save_retrieval(model, out, spec=spec, items=[f"i{k}" for k in range(6)], popularity=torch.arange(6),
                   config={}, metrics={"recall_at_100": 0.5, "items": 6, "method": "full"})
    return out


def test_registry_publishes_subfolders_whole_and_fetches_them(tmp_path, registry_url):
    bundle = tmp_path / "bundle"
    (bundle / "retrieval").mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    (bundle / "retrieval" / "items.json").write_text('["i1"]')
    reg = Registry(registry_url)
    version = reg.publish(bundle)
    assert reg.files(version) == ["config.json", "retrieval/items.json"]
    assert reg.has(version, "retrieval/items.json") and not reg.has(version, "retrieval/config.json")
    assert reg.read_text(version, "retrieval/items.json") == '["i1"]'
    _, out = reg.fetch(version, tmp_path / "only", under="retrieval")
    assert sorted(p.name for p in out.iterdir()) == ["items.json"]
    _, out = reg.fetch(version, tmp_path / "all")
    assert (out / "retrieval" / "items.json").read_text() == '["i1"]'
    with pytest.raises(FileNotFoundError, match="no 'history' folder"):
        reg.fetch(version, tmp_path / "none", under="history")
    (tmp_path / "nested-only" / "sub").mkdir(parents=True)
    (tmp_path / "nested-only" / "sub" / "f.json").write_text("{}")
    with pytest.raises(ValueError, match="no files at its top"):
        reg.publish(tmp_path / "nested-only")


def test_a_retrieval_bundle_the_ranker_cannot_feed_is_refused(tmp_path):
    model_dir, metrics = make_bundle(tmp_path, seed=1)
    retrieval = _retrieval_bundle(tmp_path / "retrieval")
    # the planted spec computes no context features from raw events (it has no sources)
    with pytest.raises(ValueError, match=r"context feature\(s\) \['user', 'device'\]"):
        push(FORCE, model_dir, metrics, registry=str(tmp_path / "reg"), retrieval_dir=retrieval)
    with pytest.raises(ValueError, match="expected 'robeflow.retrieval.v1'"):
        (tmp_path / "fake").mkdir()
        for name in ("model.safetensors", "items.json"):
            (tmp_path / "fake" / name).write_text("x")
        shutil.copyfile(model_dir / "config.json", tmp_path / "fake" / "config.json")
        push(FORCE, model_dir, metrics, registry=str(tmp_path / "reg"), retrieval_dir=tmp_path / "fake")
    assert not (tmp_path / "reg").exists()
