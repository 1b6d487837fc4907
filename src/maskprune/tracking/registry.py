"""The MLflow model registry: a maskprune model folder logged as a pyfunc model, registered, aliased.

The model is logged "from code" (pyfunc_model.py, with the maskprune package as its code), so
nothing is pickled. The registered version's source run is the stage run that trained the weights
(tagged with their md5 when it was logged), else the run that registers it. mlflow is imported only
when a model is registered: the stages import ModelToRegister without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

WEIGHTS_TAG = "maskprune.weights_md5"  # on a stage run: the md5 of the model.safetensors it trained


@dataclass(frozen=True)
class ModelToRegister:
    """A maskprune model folder to log as an MLflow model and register under `name` with `alias`."""

    folder: Path
    name: str
    alias: str
    input_shape: tuple[int, ...]  # [channels, height, width] of the images predict() takes
    num_classes: int
    weights_md5: str  # of its model.safetensors: the training run is the stage run tagged with it (WEIGHTS_TAG)
    description: str = ""  # of the new version: which model it is and what it measured
    tags: dict[str, str] | None = None  # of the new version


def training_run(client: MlflowClient, experiment_id: str, weights_md5: str) -> str | None:
    """The newest run of `experiment_id` that trained the weights of md5 `weights_md5`, None if none did."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{WEIGHTS_TAG}` = '{weights_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def register_model(client: MlflowClient, uri: str, run_id: str, model: ModelToRegister) -> str:
    """Log `model` with run `run_id` as a pyfunc model from code, register a version whose source run is
    the run that trained it (`training_run`, else `run_id`), alias the new version; returns the version."""
    import mlflow
    import numpy as np
    import timm
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    here = Path(__file__).resolve().parent
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *model.input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.num_classes))]),
    )
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"timm=={timm.__version__}",
        "safetensors",
        "numpy",
        "pydantic>=2",
        "pyyaml",
    ]
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # NOTE: MLflow exports it as MLFLOW_TRACKING_URI: restored below
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(here / "pyfunc_model.py"),
                artifacts={"checkpoint": str(model.folder)},
                code_paths=[str(here.parent)],  # the maskprune package
                pip_requirements=requirements,
                signature=signature,
                input_example=np.zeros((1, *model.input_shape), dtype=np.uint8),
            )
    finally:
        mlflow.set_tracking_uri(previous)
    try:
        client.create_registered_model(model.name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    experiment_id = client.get_run(run_id).info.experiment_id
    source_run = training_run(client, experiment_id, model.weights_md5)
    version = client.create_model_version(
        model.name,
        source=info.model_uri,
        run_id=source_run or run_id,
        tags={
            **(model.tags or {}),
            "registered_by_run": run_id,
            # NOTE: runs logged before stages tagged their weights (or in another store) cannot be found
            "source_run": "the run that trained it" if source_run else "the registering run: none here trained it",
        },
        description=model.description,
        model_id=info.model_id,
    ).version
    client.set_registered_model_alias(model.name, model.alias, str(version))
    return str(version)
