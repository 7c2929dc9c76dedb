import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipelines.cli import main
from contract.io import StepError
from pipelines.commands import check_host, kfp_cron


@pytest.mark.parametrize("expr, expected", [
    ("0 3 * * *", "0 0 3 * * *"),
    ("*/15 1-5 1,15 * 0", "0 */15 1-5 1,15 * 0"),
])
def test_kfp_cron_adds_seconds(expr, expected):
    assert kfp_cron(expr) == expected


@pytest.mark.parametrize("expr, message", [
    ("0 3 * *", "5 fields"),
    ("0 0 3 * * *", "5 fields"),
    ("61 3 * * *", "minute"),
    ("0 24 * * *", "hour"),
    ("0 3 x * *", "day of month"),
])
def test_bad_cron_is_named(expr, message):
    with pytest.raises(ValueError, match=message):
        kfp_cron(expr)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_host_rejects_non_urls():
    with pytest.raises(ValueError, match="http"):
        check_host("localhost:8080")


def test_check_host_unreachable_is_one_clear_error():
    with pytest.raises(StepError, match="cannot reach Kubeflow Pipelines"):
        check_host(f"http://127.0.0.1:{_closed_port()}", timeout_s=2)


def test_check_host_accepts_a_live_server():
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/apis/v2beta1/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}/"
        assert check_host(host) == host.rstrip("/")
    finally:
        server.shutdown()


def test_schedule_checks_cron_before_the_network(capsys):
    # Nothing listens on the host: were it contacted first, the error would be the host's.
    host = f"http://127.0.0.1:{_closed_port()}"
    code = main(["pipeline", "schedule", "--host", host, "--cron", "0 3 * *"])
    assert code == 2
    err = capsys.readouterr().err
    assert "5 fields" in err and "cannot reach" not in err


def test_submit_to_unreachable_host_fails_cleanly(capsys):
    code = main(["pipeline", "submit", "--host", f"http://127.0.0.1:{_closed_port()}"])
    assert code == 1
    assert "cannot reach Kubeflow Pipelines" in capsys.readouterr().err


def test_pipeline_arguments_mirror_params_yaml(tmp_path):
    from pipelines.commands import pipeline_arguments

    params = tmp_path / "params.yaml"
    params.write_text("pipeline:\n  device: cpu\ngenerate:\n  rows: 10\ntrain:\n  target_auc: null\n")
    args = pipeline_arguments(params, ["generate.seed=3", "pipeline.device=cuda"])
    assert args["generate"] == {"rows": 10, "seed": 3}
    assert args["train"] == {}          # null means the step's default, which KFP cannot carry
    assert args["device"] == "cuda"
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        pipeline_arguments(params, ["pipeline.device=tpu"])
    with pytest.raises(ValueError, match="unknown section"):
        pipeline_arguments(params, ["trian.epochs=1"])
