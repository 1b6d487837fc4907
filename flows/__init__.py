"""Prefect flows over the DVC pipeline.

Telemetry is off and Prefect's temporary server has time to start, unless the user sets otherwise.
The flows import the maskprune package of their own checkout: a worker runs them from its clone at
the deployed commit, whatever maskprune its environment installed (the stages, started by DVC with
`PYTHONPATH=src`, do the same).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
for _name, _value in (
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("DO_NOT_TRACK", "1"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DVC_NO_ANALYTICS", "1"),
    # Prefect's temporary server took 16 s to start on an idle 2-core machine; its 20 s default
    # failed flows there under load
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"),
):
    os.environ.setdefault(_name, _value)


def check_prefect_api() -> None:
    """With PREFECT_API_URL set, its server must answer (else one line naming the variable)."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return
    import requests

    from maskprune.errors import MaskpruneError

    try:
        requests.get(api.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as err:
        raise MaskpruneError(
            f"PREFECT_API_URL={api} does not answer ({type(err).__name__}): start it with "
            "`prefect server start`, or unset PREFECT_API_URL to run without a server"
        ) from None
