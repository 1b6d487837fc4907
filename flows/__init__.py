"""Prefect flows over the DVC pipeline. Telemetry is off unless the user asks for it."""

import os

for _name, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                      ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DVC_NO_ANALYTICS", "1")):  # fmt: skip
    os.environ.setdefault(_name, _value)
