import pytest

from pipelines.cli import build_parser, main


def test_every_step_is_a_subcommand():
    parser = build_parser()
    steps = set(parser._subparsers._group_actions[0].choices)
    assert "summary" in steps


def test_unknown_step_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-step"])
    assert exc.value.code == 2


def test_summary_lists_existing_outputs(tmp_path, capsys):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    assert main(["summary", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "data/raw" in out and "data/validated" not in out
