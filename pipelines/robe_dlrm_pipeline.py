"""The robeflow Kubeflow pipeline: wiring only (the steps live in components/).

    generate -> ingest -> validate -> features -> train -> evaluate -> (gate) push
                                                  \            \-> monitor
                                                   \-> retrieval

Arguments mirror ``params.yaml``: one dict per section (an empty dict means the step's
built-in defaults), plus ``device``: ``cuda`` runs the train step on a GPU node;
``workers`` (``train.workers``): above 1 the train step is a Kubeflow Trainer TrainJob of
that many nodes, staged under ``train_staging`` (``pipeline.train_staging``; see
``pipelines/trainjob.py``). Importing or compiling this module runs nothing.
"""


from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from pipelines.ops import (
    IMAGE,
    evaluate_op,
    features_op,
    generate_op,
    ingest_op,
    monitor_op,
    push_op,
    retrieval_op,
    train_job_op,
    train_op,
    validate_op,
)

# params.yaml sections the pipeline takes as arguments, in pipeline order.
SECTIONS: tuple[str, ...] = ("generate", "ingest", "validate", "features", "train", "evaluate", "push",
                             "monitor", "retrieval")

# (cpu request, memory request, memory limit) per step; the train step's GPU variant adds
# one nvidia.com/gpu.
RESOURCES: dict[str, tuple[str, str, str]] = {
    "generate": ("1", "2Gi", "4Gi"),
    "ingest": ("1", "2Gi", "4Gi"),
    "validate": ("1", "4Gi", "8Gi"),
    "features": ("2", "8Gi", "16Gi"),
    "train": ("4", "8Gi", "16Gi"),
    "train_job": ("250m", "512Mi", "1Gi"),   # only waits: the TrainJob's nodes train
    "evaluate": ("1", "4Gi", "8Gi"),
    "push": ("500m", "1Gi", "2Gi"),
    "monitor": ("1", "4Gi", "8Gi"),
    "retrieval": ("1", "4Gi", "8Gi"),
}


def _sized(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    cpu, mem, mem_limit = RESOURCES[step]
    return (task.set_cpu_request(cpu).set_memory_request(mem).set_memory_limit(mem_limit)
            .set_display_name(step))


def _train_and_ship(gpu: bool, train: dict, evaluate: dict, push: dict, monitor: dict,
                    model_input: PipelineChannel, truth: PipelineChannel, workers: PipelineChannel,
                    train_staging: PipelineChannel, retrieval: PipelineChannel,
                    retrieval_metrics: PipelineChannel) -> None:
    """Adds the steps after the features to the current branch: train -> evaluate -> push
    (with the retrieval model ``retrieval``), which runs only when the evaluate gate
    passed; and the drift monitor of the newest window, scored by the trained model, with
    the retrieval model's metrics (``retrieval_metrics``) on its dashboard. The train step is a TrainJob of ``workers`` nodes
    when ``workers > 1`` (GPU nodes when ``gpu``), else one pod (on a GPU node when ``gpu``).

    Called once in each branch of ``device == "cuda"`` and of ``workers > 1``, so no
    artifact has to be merged across branches (KFP's local runner can merge neither
    artifacts with dsl.OneOf nor resolve a task output inside a nested pipeline's condition).
    """
    device = "cuda" if gpu else "cpu"
    with dsl.If(workers > 1, name="train-job"):
        job = _sized(train_job_op(params=train, device=device, workers=workers, staging=train_staging, image=IMAGE,
                                  model_input=model_input), "train_job")
        _ship(job, evaluate, push, monitor, model_input, truth, retrieval, retrieval_metrics)
    with dsl.Else(name="train-pod"):
        trained = _sized(train_op(params=train, device=device, model_input=model_input), "train")
        if gpu:
            trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        _ship(trained, evaluate, push, monitor, model_input, truth, retrieval, retrieval_metrics)


def _ship(trained: dsl.PipelineTask, evaluate: dict, push: dict, monitor: dict, model_input: PipelineChannel,
          truth: PipelineChannel, retrieval: PipelineChannel, retrieval_metrics: PipelineChannel) -> None:
    """evaluate -> (gate) push with the retrieval model, and monitor, of the model ``trained`` wrote."""
    evaluated = _sized(evaluate_op(params=evaluate, model=trained.outputs["model"],
                                   model_input=model_input, truth=truth), "evaluate")
    with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
        _sized(push_op(params=push, model=trained.outputs["model"], metrics=evaluated.outputs["metrics"],
                       model_input=model_input, retrieval=retrieval),
               "push")
    _sized(monitor_op(params=monitor, model_input=model_input, model=trained.outputs["model"],
                      retrieval_metrics=retrieval_metrics), "monitor")


@dsl.pipeline(
    name="robe-dlrm",
    description="Synthetic or real shop transactions -> validated data -> Feast features -> "
                "ROBE-compressed DLRM -> evaluation gate -> registry; drift monitoring.",
)
def robe_dlrm_pipeline(
    generate: dict = {},
    ingest: dict = {},
    validate: dict = {},
    features: dict = {},
    train: dict = {},
    evaluate: dict = {},
    push: dict = {},
    monitor: dict = {},
    retrieval: dict = {},
    device: str = "cpu",
    workers: int = 1,
    train_staging: str = "",
):
    gen = _sized(generate_op(params=generate), "generate")
    ing = _sized(ingest_op(params=ingest, raw=gen.outputs["raw"]), "ingest")
    val = _sized(validate_op(params=validate, ingested=ing.outputs["ingested"]), "validate")
    feat = _sized(features_op(params=features, validated=val.outputs["validated"]), "features")
    # beside the ranker: the oracle's metrics rebuild the generated world from its parameters
    retrieved = _sized(retrieval_op(params=retrieval, generate=generate, model_input=feat.outputs["model_input"],
                                    validated=val.outputs["validated"]), "retrieval")
    tail = dict(train=train, evaluate=evaluate, push=push, monitor=monitor, model_input=feat.outputs["model_input"],
                truth=gen.outputs["truth"], workers=workers, train_staging=train_staging,
                retrieval=retrieved.outputs["model"], retrieval_metrics=retrieved.outputs["metrics"])
    with dsl.If(device == "cuda", name="train-on-gpu"):
        _train_and_ship(gpu=True, **tail)
    with dsl.Else(name="train-on-cpu"):
        _train_and_ship(gpu=False, **tail)
