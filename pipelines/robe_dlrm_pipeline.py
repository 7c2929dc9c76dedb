"""The robeflow Kubeflow pipeline: wiring only (the steps live in components/).

    generate -> ingest -> validate -> features -> train -> evaluate

Arguments mirror ``params.yaml``: one dict per section (an empty dict means the step's
built-in defaults), plus ``device``: ``cuda`` runs the train step on a GPU node.
Importing or compiling this module runs nothing.
"""


from kfp import dsl
from kfp.dsl import Dataset, Input

from components.kfp_components import (
    evaluate_op,
    features_op,
    generate_op,
    ingest_op,
    train_op,
    validate_op,
)

# params.yaml sections the pipeline takes as arguments, in pipeline order.
SECTIONS: tuple[str, ...] = ("generate", "ingest", "validate", "features", "train", "evaluate")

# (cpu request, memory request, memory limit) per step; the train step's GPU variant adds
# one nvidia.com/gpu.
RESOURCES: dict[str, tuple[str, str, str]] = {
    "generate": ("1", "2Gi", "4Gi"),
    "ingest": ("1", "2Gi", "4Gi"),
    "validate": ("1", "4Gi", "8Gi"),
    "features": ("2", "8Gi", "16Gi"),
    "train": ("4", "8Gi", "16Gi"),
    "evaluate": ("1", "4Gi", "8Gi"),
}


def _sized(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    cpu, mem, mem_limit = RESOURCES[step]
    return (task.set_cpu_request(cpu).set_memory_request(mem).set_memory_limit(mem_limit)
            .set_display_name(step))


def _train_and_ship(gpu: bool):
    """The steps after the features: train (on a GPU node when ``gpu``) -> evaluate.

    Built twice, as the two branches of ``device == "cuda"``, so that no artifact has to
    be merged across branches (KFP's local runner cannot merge artifacts with dsl.OneOf).
    """

    @dsl.pipeline(name=f"train-and-ship-{'gpu' if gpu else 'cpu'}")
    def train_and_ship(train: dict, evaluate: dict, model_input: Input[Dataset], truth: Input[Dataset]):
        trained = _sized(train_op(params=train, device="cuda" if gpu else "cpu", model_input=model_input),
                         "train")
        if gpu:
            trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        _sized(evaluate_op(params=evaluate, model=trained.outputs["model"], model_input=model_input,
                           truth=truth), "evaluate")

    return train_and_ship


train_and_ship_gpu = _train_and_ship(gpu=True)
train_and_ship_cpu = _train_and_ship(gpu=False)


@dsl.pipeline(
    name="robe-dlrm",
    description="Synthetic or real shop transactions -> validated data -> Feast features -> "
                "ROBE-compressed DLRM -> evaluation gate.",
)
def robe_dlrm_pipeline(
    generate: dict = {},
    ingest: dict = {},
    validate: dict = {},
    features: dict = {},
    train: dict = {},
    evaluate: dict = {},
    device: str = "cpu",
):
    gen = _sized(generate_op(params=generate), "generate")
    ing = _sized(ingest_op(params=ingest, raw=gen.outputs["raw"]), "ingest")
    val = _sized(validate_op(params=validate, ingested=ing.outputs["ingested"]), "validate")
    feat = _sized(features_op(params=features, validated=val.outputs["validated"]), "features")
    tail = dict(train=train, evaluate=evaluate, model_input=feat.outputs["model_input"],
                truth=gen.outputs["truth"])
    with dsl.If(device == "cuda", name="train-on-gpu"):
        train_and_ship_gpu(**tail).set_display_name("train-and-ship (GPU)")
    with dsl.Else(name="train-on-cpu"):
        train_and_ship_cpu(**tail).set_display_name("train-and-ship (CPU)")
