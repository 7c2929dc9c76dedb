"""The KServe InferenceService manifest: parses, and runs this predictor on the registry."""

from __future__ import annotations

from pathlib import Path

import yaml

from contract.params import load_config
from serving.config import ServeConfig

MANIFEST = Path(__file__).resolve().parents[2] / "serving" / "manifests" / "inference_service.yaml"


def test_inference_service_essentials():
    doc = yaml.safe_load(MANIFEST.read_text())
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    name = doc["metadata"]["name"]
    predictor = doc["spec"]["predictor"]
    # autoscaling
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    assert predictor["scaleTarget"] > 0
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "robeflow/components:0.1.0"
    assert container["command"] == ["robeflow", "serve"]
    args = container["args"]
    # the registry comes in through KServe's storage initializer at /mnt/models
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].startswith(("s3://", "gs://", "pvc://", "https://"))
    assert args[args.index("--registry") + 1] == "/mnt/models"
    features = args[args.index("--features") + 1]
    assert any(m["mountPath"] == features for m in container["volumeMounts"])
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    # resources: requests within limits
    res = container["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"] and key in res["limits"]
    assert float(res["requests"]["cpu"]) <= float(res["limits"]["cpu"])
    # readiness follows the model being loaded, under the model name serve uses
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == port
    assert probe["path"] == f"/v2/models/{ServeConfig().model_name}/ready" == f"/v2/models/{name}/ready"
    # liveness: the process answers, whether or not a model is loaded
    live = container["livenessProbe"]
    assert live["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert live["periodSeconds"] > 0 and live["failureThreshold"] >= 1
    # the pod listens on all its interfaces; a local run on loopback only
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert ServeConfig().host == "127.0.0.1"
    # the repository endpoints stay closed in the pod: no control token in its environment
    assert ServeConfig().control_token_env not in env


def test_serve_params_section_loads():
    cfg = load_config(ServeConfig, "serve", Path(__file__).resolve().parents[2] / "params.yaml")
    assert cfg.http_port == 8080 and cfg.max_candidates >= 100
    assert cfg.host == "127.0.0.1" and cfg.reload_s > 0
