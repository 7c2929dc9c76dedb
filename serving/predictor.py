"""The KServe predictor: ranks a user's candidate items with the production DLRM bundle.

Per request it reads the user's and the items' features from the Feast online store
(``features.online.OnlineFeatures``: one online read for all candidates), builds the
model input with the transform training used (``features.transform.build_model_frame``),
scores all candidates in one batch and returns them best first. Users and items the store
does not know are still scored: their ids hash into the embedding array and their
missing features are filled as in training.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serving.requests import ScoreRequest, parse_v1, parse_v2


@dataclass
class LoadedBundle:
    """A bundle loaded from the registry."""

    model: Any            # dlrm.model.DLRM in eval mode, on CPU
    doc: dict[str, Any]   # its config.json
    version: str          # registry version, e.g. "v3"


def load_production(registry: str | Path, version: str | None = None) -> LoadedBundle:
    """Loads the registry's production bundle (or ``version``) with safetensors + JSON only.

    A local registry is read in place; a remote one is copied to a temporary dir first.
    """
    from dlrm.bundle import load_model
    from serving.registry import Registry

    reg = Registry(registry)
    version = version or reg.production()
    if version is None:
        raise FileNotFoundError(f"registry {registry} has no production model (no 'production' pointer); "
                                "run `robeflow push` first")
    local = reg.local_dir(version)
    if local is not None:
        reg.files(version)  # checks that the version exists
        model, doc = load_model(local)
    else:
        with tempfile.TemporaryDirectory(prefix="robeflow-bundle-") as tmp:
            _, path = reg.fetch(version, Path(tmp))
            model, doc = load_model(path)
    return LoadedBundle(model=model, doc=doc, version=version)


class Ranker:
    """Scores candidates of :class:`ScoreRequest` s with a model and an online feature reader.

    Args:
        model: the DLRM (eval mode).
        spec: the FeatureSpec it was trained on.
        features: an object with ``model_input(user_id, item_ids, context) -> ModelInput``
            (:class:`features.online.OnlineFeatures`).
    """

    def __init__(self, model: Any, spec: Any, features: Any):
        self.model, self.spec, self.features = model, spec, features

    def scores(self, request: ScoreRequest) -> np.ndarray:
        """(K,) float32 purchase probabilities of the request's items, in request order."""
        from dlrm.bundle import predict

        try:
            inputs = self.features.model_input(request.user_id, list(request.item_ids), request.context)
        except ValueError as e:  # a context value the transform cannot use
            raise InvalidInput(f"cannot build features for user {request.user_id!r}: {e}") from None
        return predict(self.model, inputs, batch_size=max(1, len(request.item_ids)))

    def rank(self, request: ScoreRequest) -> tuple[list[str], list[float]]:
        """The request's items best first, and their scores."""
        s = self.scores(request)
        order = np.argsort(-s, kind="stable")
        return [request.item_ids[i] for i in order], [float(s[i]) for i in order]


class RobeflowModel(kserve.Model):
    """KServe custom predictor of a robeflow DLRM, answering v1 and v2 requests.

    Args:
        name: the model name in the URL (``/v1/models/NAME:predict``).
        registry: registry dir or fsspec URL (the production bundle is loaded).
        features_repo: the materialised Feast repo (``data/features``).
        max_candidates: most items per request; more is a 400.
        torch_threads: intra-op threads of the model (1 suits small per-request batches).
    """

    def __init__(self, name: str, registry: str | Path, features_repo: str | Path,
                 max_candidates: int = 1000, torch_threads: int = 1):
        super().__init__(name)
        self.registry, self.features_repo = str(registry), Path(features_repo)
        self.max_candidates, self.torch_threads = max_candidates, torch_threads
        self.ranker: Ranker | None = None
        self.version: str | None = None
        self.ready = False

    def load(self) -> bool:
        """Loads the production bundle and opens the online store; sets ``ready``."""
        import torch

        from features.online import OnlineFeatures
        from features.spec import FeatureSpec

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        bundle = load_production(self.registry)
        spec = FeatureSpec.from_dict(bundle.doc["feature_spec"])
        online = OnlineFeatures(self.features_repo, spec)
        self.ranker = Ranker(bundle.model, spec, online)
        self.version = bundle.version
        self.ready = True
        return self.ready

    def _ranked(self, requests: Sequence[ScoreRequest]) -> list[tuple[list[str], list[float]]]:
        assert self.ranker is not None, "predict before load"
        return [self.ranker.rank(r) for r in requests]

    def predict(self, payload: Any, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> Any:
        """v1: ``{"instances": [...]}`` -> ``{"predictions": [...]}``; v2: InferRequest -> InferResponse."""
        if isinstance(payload, InferRequest):
            request = parse_v2(payload, self.max_candidates)
            (items, scores), = self._ranked([request])
            outputs = [
                InferOutput(name="item_ids", shape=[len(items)], datatype="BYTES", data=items),
                InferOutput(name="scores", shape=[len(scores)], datatype="FP32", data=scores),
            ]
            return InferResponse(response_id=payload.id or uuid.uuid4().hex, model_name=self.name,
                                 model_version=self.version, infer_outputs=outputs)
        if isinstance(payload, (bytes, bytearray)):
            raise InvalidInput("the request body must be JSON (Content-Type: application/json)")
        requests = parse_v1(payload, self.max_candidates)
        ranked = self._ranked(requests)
        return {
            "predictions": [{"user_id": r.user_id, "item_ids": items, "scores": scores}
                            for r, (items, scores) in zip(requests, ranked)],
            "model_version": self.version,
        }
