"""One program per DVC stage (`python -m stages.<name>`): its params, computation, outputs and MLflow record."""
