"""The thin KServe adapter: v1/v2 requests -> the batcher -> the ranker -> responses.

The work is done by :class:`serving.ranker.Ranker` (bundle + features -> scores) and
:class:`serving.batcher.Batcher` (requests that arrive together are scored together);
this class maps KServe's protocol onto them and is configured by one
:class:`serving.config.ServeConfig`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serving.batcher import Batcher
from serving.config import ServeConfig
from serving.ranker import Ranker, load_production
from serving.requests import ScoreRequest, parse_v1, parse_v2


class RobeflowModel(kserve.Model):
    """KServe custom predictor of a robeflow DLRM, answering v1 and v2 requests.

    Args:
        cfg: the ``serve`` section (model name, limits, threads, batching, online reader).
        registry: registry dir or fsspec URL (the production bundle is loaded).
        features_repo: the materialised Feast repo (``data/features``).
        online: spec -> online feature reader (default: a
            :class:`features.online.OnlineFeatures` on ``features_repo`` with
            ``cfg.online_reader``).
    """

    def __init__(self, cfg: ServeConfig, registry: str | Path, features_repo: str | Path,
                 online: Callable[[Any], Any] | None = None):
        super().__init__(cfg.model_name)
        if cfg.online_reader not in ("lean", "feast"):
            raise ValueError(f"serve.online_reader = {cfg.online_reader!r}; expected 'lean' or 'feast'")
        self.cfg = cfg
        self.registry, self.features_repo = str(registry), Path(features_repo)
        self.online = online or self._open_online
        self.ranker: Ranker | None = None
        self.batcher: Batcher | None = None
        self.version: str | None = None
        self.ready = False

    def _open_online(self, spec: Any) -> Any:
        from features.online import OnlineFeatures

        return OnlineFeatures(self.features_repo, spec, reader=self.cfg.online_reader,
                              max_age_s=self.cfg.online_cache_s)

    def load(self) -> bool:
        """Loads the production bundle, opens the online reader and scores one warm-up
        request (the first call of the embedding op is slow); then sets ``ready``."""
        import torch

        from contract.spec import FeatureSpec

        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        bundle = load_production(self.registry)
        spec = FeatureSpec.from_dict(bundle.doc["feature_spec"])
        ranker = Ranker(bundle.model, spec, self.online(spec))
        ranker.rank(ScoreRequest("warm-up-user", ("warm-up-item",), {}))
        self.ranker, self.version = ranker, bundle.version
        self.batcher = Batcher(ranker.rank_many, self.cfg.max_batch_requests, self.cfg.batch_wait_ms / 1e3)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Unloads (KServe calls this on shutdown): not ready, scoring thread stopped."""
        super().stop()
        if self.batcher is not None:
            self.batcher.close()

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        """v1: ``{"instances": [...]}`` -> ``{"predictions": [...]}``; v2: InferRequest -> InferResponse."""
        if self.batcher is None:
            raise RuntimeError(f"model {self.name} predicts before load()")
        if isinstance(payload, InferRequest):
            request = parse_v2(payload, self.cfg.max_candidates)
            (items, scores), = await self.batcher.submit([request])
            outputs = [
                InferOutput(name="item_ids", shape=[len(items)], datatype="BYTES", data=items),
                InferOutput(name="scores", shape=[len(scores)], datatype="FP32", data=scores),
            ]
            return InferResponse(response_id=payload.id or uuid.uuid4().hex, model_name=self.name,
                                 model_version=self.version, infer_outputs=outputs)
        if isinstance(payload, (bytes, bytearray)):
            raise InvalidInput("the request body must be JSON (Content-Type: application/json)")
        requests = parse_v1(payload, self.cfg.max_candidates)
        ranked = await self.batcher.submit(requests)
        return {
            "predictions": [{"user_id": r.user_id, "item_ids": items, "scores": scores}
                            for r, (items, scores) in zip(requests, ranked)],
            "model_version": self.version,
        }
