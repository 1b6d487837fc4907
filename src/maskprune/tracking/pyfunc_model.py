"""The MLflow model that the report stage registers: a maskprune checkpoint behind MLflow's pyfunc API.

Logged as an MLflow "model from code": MLflow runs this file to load the model, so nothing is
pickled; the checkpoint folder (safetensors + meta.json) is the model's artifact and the maskprune
package travels in its code folder. This module is never imported by the library.

    model = mlflow.pyfunc.load_model("models:/maskprune-pruned@champion")
    probabilities = model.predict(images)  # uint8 [n, channels, height, width] -> float32 [n, classes]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class CheckpointClassifier(PythonModel):
    """A maskprune checkpoint folder as an MLflow pyfunc classifier: uint8 images in, class probabilities out."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        """Load the checkpoint artifact and its input normalization."""
        from maskprune.checkpoint import load_model
        from maskprune.config import ModelSpec
        from maskprune.data.loader import Normalizer

        self.model, meta = load_model(Path(context.artifacts["checkpoint"]))
        self.model.eval()
        spec = ModelSpec.model_validate(meta["model"])
        self.normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, torch.device("cpu"))

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:  # noqa: ANN001
        """Softmax probabilities [n, classes] for uint8 images [n, channels, height, width] (or floats in 0..1)."""
        images = torch.as_tensor(np.asarray(model_input))
        if images.dtype != torch.uint8:  # floats in 0..1
            images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        with torch.inference_mode():
            return self.model(self.normalize(images)).float().softmax(dim=-1).numpy()


mlflow.models.set_model(CheckpointClassifier())
