import pytest

from serving.cli import serve
from serving.config import ServeConfig


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "feature_store.yaml").write_text("project: robeflow\n")
    return tmp_path


@pytest.mark.parametrize("cfg, message", [
    (ServeConfig(workers=0), "serve.workers = 0"),
    (ServeConfig(workers=2, grpc_port=8081), "serve.grpc_port = 8081 needs serve.workers = 1"),
    (ServeConfig(online_cache_s=-1), "serve.online_cache_s"),
    (ServeConfig(max_candidates=0), "serve.max_candidates"),
])
def test_bad_settings_are_refused_before_anything_loads(repo, tmp_path, cfg, message):
    # the registry does not exist: reaching the model load would raise something else
    with pytest.raises(ValueError, match=message):
        serve(cfg, str(tmp_path / "no-registry"), repo)


def test_a_directory_that_is_no_feast_repo_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a materialised Feast repo"):
        serve(ServeConfig(), str(tmp_path / "registry"), tmp_path)
