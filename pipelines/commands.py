"""`robeflow pipeline`: compile, submit, schedule or run locally the Kubeflow pipeline.

    robeflow pipeline compile                      # -> pipelines/compiled/robe_dlrm_pipeline.yaml
    robeflow pipeline submit   --host URL          # one run with params.yaml as arguments
    robeflow pipeline schedule --host URL --cron "0 3 * * *"
    robeflow pipeline run-local --workdir /tmp/rf  # KFP's local runner, this environment

Arguments are checked before anything touches the network; an unreachable host is one
clear error line.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from contract.io import StepError, log
from contract.params import add_params_args, apply_overrides, read_params

COMPILED = Path("pipelines/compiled/robe_dlrm_pipeline.yaml")
PIPELINE_NAME = "robe-dlrm"

# (name, lowest, highest) of the five standard cron fields.
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
                ("day of week", 0, 7))
_CRON_ATOM = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?$")


def kfp_cron(expr: str) -> str:
    """Standard 5-field cron -> the 6-field form (seconds first) that KFP's scheduler takes.

    >>> kfp_cron("0 3 * * *")
    '0 0 3 * * *'
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields (minute hour day month weekday), "
                         f"got {len(fields)}")
    for value, (name, lo, hi) in zip(fields, _CRON_FIELDS):
        for atom in value.split(","):
            m = _CRON_ATOM.match(atom)
            if not m:
                raise ValueError(f"cron expression {expr!r}: {name} field {value!r} is not valid")
            numbers = [int(x) for x in re.findall(r"\d+", m.group(1))]
            if any(not lo <= n <= hi for n in numbers):
                raise ValueError(f"cron expression {expr!r}: {name} must lie in {lo}..{hi}, got {value!r}")
    return "0 " + " ".join(fields)


def check_host(host: str, timeout_s: float = 5.0) -> str:
    """Validates a Kubeflow Pipelines URL and checks that it answers; returns it without a trailing /."""
    parsed = urllib.parse.urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--host {host!r} must be an http(s) URL such as http://localhost:8080")
    host = host.rstrip("/")
    url = f"{host}/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            pass
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise StepError(f"Kubeflow Pipelines at {host} answered {err.code} {err.reason} on {url}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StepError(f"cannot reach Kubeflow Pipelines at {host}: {reason}")
    return host


def pipeline_arguments(params: Path | None, overrides: list[str], *, cluster: bool = True) -> dict[str, Any]:
    """The pipeline's arguments: one dict per params.yaml section, with -S overrides applied,
    plus the ``pipeline`` section's settings (``device``, ``train_staging``) and
    ``train.workers`` (``workers``: above 1 the train step is a TrainJob) as arguments of
    their own. ``cluster=False`` (run-local) needs no staging: the train step stays one pod."""
    from pipelines.robe_dlrm_pipeline import SECTIONS

    data = read_params(params)
    unknown = sorted({o.split(".", 1)[0] for o in overrides} - set(SECTIONS) - {"pipeline"})
    if unknown:
        raise ValueError(f"override(s) for unknown section(s) {unknown}; "
                         f"sections: {', '.join((*SECTIONS, 'pipeline'))}")
    args: dict[str, Any] = {}
    for section in SECTIONS:
        mine = [o for o in overrides if o.split(".", 1)[0] == section]
        args[section] = _drop_nulls(apply_overrides(section, data.get(section) or {}, mine))
    settings = apply_overrides("pipeline", data.get("pipeline") or {},
                               [o for o in overrides if o.split(".", 1)[0] == "pipeline"])
    extra = sorted(set(settings) - {"device", "train_staging"})
    if extra:
        raise ValueError(f"unknown pipeline setting(s) {', '.join(f'pipeline.{k}' for k in extra)}; "
                         "known: pipeline.device, pipeline.train_staging")
    device = settings.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"pipeline.device = {device!r}; expected 'cpu' or 'cuda'")
    args["device"] = device
    workers = args["train"].get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"train.workers = {workers!r}; expected an int >= 1")
    staging = settings.get("train_staging") or ""
    if workers > 1 and cluster and not staging:
        raise ValueError(f"train.workers = {workers} runs the train step as a Kubeflow TrainJob, which needs "
                         "pipeline.train_staging: an fsspec URL (s3://..., gs://...) or shared-volume path "
                         "its pods can read and write")
    args["workers"], args["train_staging"] = workers, str(staging)
    return args


def _drop_nulls(values: dict[str, Any]) -> dict[str, Any]:
    # KFP cannot carry null inside a dict argument; every nullable parameter defaults to
    # None in its config dataclass, so leaving the key out means the same thing.
    return {k: _drop_nulls(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None}


def compile_pipeline(out: Path = COMPILED) -> Path:
    """Compiles the pipeline to KFP IR YAML at ``out``."""
    from kfp import compiler

    from pipelines.robe_dlrm_pipeline import robe_dlrm_pipeline

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(robe_dlrm_pipeline, package_path=str(out))
    return out


def submit(host: str, arguments: dict[str, Any], experiment: str, run_name: str | None = None) -> str:
    """Submits one run; returns its run id."""
    import kfp

    host = check_host(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml")
        client = kfp.Client(host=host)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment)
    return result.run_id


def schedule(host: str, cron: str, arguments: dict[str, Any], experiment: str, job_name: str) -> str:
    """Creates a recurring run on a standard 5-field cron; returns its id."""
    import kfp

    cron6 = kfp_cron(cron)
    host = check_host(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml")
        client = kfp.Client(host=host)
        try:
            exp = client.get_experiment(experiment_name=experiment)
        except ValueError:
            exp = client.create_experiment(experiment)
        run = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron6,
            params=arguments, pipeline_package_path=str(package), max_concurrency=1, no_catchup=True)
    return run.recurring_run_id


def run_local(workdir: Path, arguments: dict[str, Any]) -> dict[str, Any]:
    """Runs the pipeline with KFP's local subprocess runner in this Python environment.

    Returns the pipeline's outputs (artifact paths and metrics) as KFP reports them.
    """
    from kfp import local

    from pipelines.robe_dlrm_pipeline import robe_dlrm_pipeline

    workdir.mkdir(parents=True, exist_ok=True)
    # No cluster here: the train step runs in one local process, which itself starts
    # train.workers data-parallel processes (a TrainJob needs Kubeflow Trainer).
    arguments = {**arguments, "workers": 1}
    # A relative registry lives under the run's workdir, not wherever the command ran.
    push = dict(arguments.get("push") or {})
    registry = str(push.get("registry", "registry"))
    if "://" not in registry and not Path(registry).is_absolute():
        push["registry"] = str((workdir / registry).resolve())
    arguments = {**arguments, "push": push}
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "outputs"))
    task = robe_dlrm_pipeline(**arguments)
    return dict(task.outputs) if hasattr(task, "outputs") and task.outputs else {}


# ---- CLI -------------------------------------------------------------------------------

def _main(args: argparse.Namespace) -> int:
    if args.action == "compile":
        out = compile_pipeline(args.out)
        print(f"compiled pipeline written to {out}")
        return 0
    if args.action == "schedule":
        kfp_cron(args.cron)  # fail on a bad cron before anything else
    arguments = pipeline_arguments(args.params, args.overrides, cluster=args.action != "run-local")
    if args.action == "run-local":
        log("pipeline", f"running {PIPELINE_NAME} locally under {args.workdir}")
        outputs = run_local(args.workdir, arguments)
        print(f"local run finished; outputs under {args.workdir / 'outputs'}")
        for name, value in outputs.items():
            print(f"  {name}: {value}")
        return 0
    if args.action == "submit":
        run_id = submit(args.host, arguments, args.experiment, args.run_name)
        print(f"submitted run {run_id} to {args.host}")
        return 0
    run_id = schedule(args.host, args.cron, arguments, args.experiment, args.job_name)
    print(f"recurring run {run_id} scheduled on {args.host} with cron {args.cron!r}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="compile, submit, schedule or locally run the Kubeflow pipeline")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    c = actions.add_parser("compile", help="write the compiled pipeline YAML")
    c.add_argument("--out", type=Path, default=COMPILED, help=f"output file (default {COMPILED})")

    for name, helptext in (("submit", "start one run on a Kubeflow Pipelines host"),
                           ("schedule", "create a recurring run on a Kubeflow Pipelines host")):
        s = actions.add_parser(name, help=helptext)
        s.add_argument("--host", required=True, help="Kubeflow Pipelines URL, e.g. http://localhost:8080")
        s.add_argument("--experiment", default="robeflow", help="experiment name (default robeflow)")
        add_params_args(s)
        if name == "submit":
            s.add_argument("--run-name", default=None)
        else:
            s.add_argument("--cron", required=True, help='standard 5-field cron, e.g. "0 3 * * *" (daily 03:00)')
            s.add_argument("--job-name", default=f"{PIPELINE_NAME}-scheduled")

    r = actions.add_parser("run-local", help="run the pipeline here with KFP's local runner")
    r.add_argument("--workdir", type=Path, required=True, help="where the local run keeps its artifacts")
    add_params_args(r)
    p.set_defaults(func=_main)
