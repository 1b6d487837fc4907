"""The MLflow model registry: a maskprune model folder logged as a pyfunc model, registered, aliased.

The model is logged "from code" (pyfunc_model.py, with the maskprune package as its code), so
nothing is pickled. mlflow is imported only when a model is registered: the stages import
ModelToRegister without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class ModelToRegister:
    """A maskprune model folder to log as an MLflow model and register under `name` with `alias`."""

    folder: Path
    name: str
    alias: str
    input_shape: tuple[int, ...]  # [channels, height, width] of the images predict() takes
    num_classes: int


def register_model(client: MlflowClient, uri: str, run_id: str, model: ModelToRegister) -> str:
    """Log `model` with run `run_id` as a pyfunc model from code, register it, alias the new version."""
    import mlflow
    import numpy as np
    import timm
    import torch
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
                registered_model_name=model.name,
            )
    finally:
        mlflow.set_tracking_uri(previous)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model.name, model.alias, version)
    return version
