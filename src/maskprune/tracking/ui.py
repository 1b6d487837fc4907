"""The MLflow UI on this repository's store, opened on the experiment's runs table.

    python -m maskprune.tracking.ui [--port 5000]      # (make ui)

MLflow 3's UI opens an experiment on its GenAI overview (traces, token usage) unless the address
asks for the model-training view; this prints the address of the experiment's runs table in that
view, `<ui>/#/experiments/<id>/runs?workflowType=machine_learning`, then serves the UI on
127.0.0.1. With `tracking.uri` (or MLFLOW_TRACKING_URI) naming a server, that server is the UI.
"""

from __future__ import annotations

import argparse
import os

from maskprune.config import PARAMS_FILE, find_repo_root, load_params
from maskprune.errors import exit_on_user_error
from maskprune.tracking.runs import tracking_uri

MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def runs_table_url(ui: str, experiment_id: str | None) -> str:
    """The address of the experiment's runs table in the model-training view (the experiments list without one)."""
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{ui.rstrip('/')}/#/{page}?{MODEL_TRAINING_VIEW}"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskprune.tracking.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5000, help="where to serve the UI on 127.0.0.1 (default 5000)")
    port = parser.parse_args(argv).port
    root = find_repo_root()
    cfg = load_params(root / PARAMS_FILE).tracking
    uri = tracking_uri(cfg, root)
    served = uri.startswith(("http://", "https://"))
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(cfg.experiment)
    ui = uri if served else f"http://127.0.0.1:{port}"
    print(f"MLflow UI: {runs_table_url(ui, found.experiment_id if found else None)}", flush=True)
    if not served:
        os.execvp("mlflow", ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)])


if __name__ == "__main__":
    main()
