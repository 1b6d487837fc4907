"""MLflow runs: one parent run per pipeline execution, one nested run per stage.

Stages write their outputs first and log them here afterwards, so a tracking outage never loses a
result. The parent run comes from `MASKPRUNE_PARENT_RUN_ID` (set by the Prefect flow); under a
plain `dvc repro` the stages of one invocation find each other through the DVC process they share
(its pid and start time, tagged on the parent run). mlflow is imported lazily, so the library
works without it when tracking is disabled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskprune.config import TrackingSection
from maskprune.errors import MaskpruneError
from maskprune.tracking.provenance import dvc_dep_hashes, dvc_invocation_key, file_md5, git_tags
from maskprune.tracking.registry import WEIGHTS_TAG, ModelToRegister, register_model

PARENT_ENV = "MASKPRUNE_PARENT_RUN_ID"
FLOW_RUN_ENV = "MASKPRUNE_PREFECT_FLOW_RUN_ID"
INVOCATION_TAG = "maskprune.invocation"
DEPS_TAG = "dvc.deps.md5"  # the digest of PROVENANCE_FILE's dependency hashes: runs with equal inputs share it
PROVENANCE_FILE = "provenance.json"  # a stage run's artifact: per dependency the md5 DVC locks for it
DEFAULT_DB = "mlflow.db"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
DEFAULT_ARTIFACTS = "mlartifacts"
DATABASE_SCHEMES = ("postgresql", "mysql")  # SQLAlchemy stores that take a connect_timeout

for _name, _value in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "1"),
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),  # NOTE: a stage's log is one line per result
):
    os.environ.setdefault(_name, _value)


@dataclass
class StageRecord:
    """What a stage logs: flat params, final metrics, per-epoch history and artifact files.

    `parent_artifacts` are logged to the pipeline's parent run as well (e.g. the report),
    `model_weights` is the weights file the stage trained (logged, its md5 tagged: a registered model
    names the run that trained it by that), and `register` names a model to log with the stage's run
    and register.
    """

    stage: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    parent_artifacts: list[Path] = field(default_factory=list)
    model_weights: Path | None = None
    register: ModelToRegister | None = None
    started: float | None = None  # time.time() when the stage began its work: the run's start (else: when logged)


def home_repository(root: Path) -> Path:
    """The repository whose `.dvc/tmp/` holds the copy `root` (`dvc exp run --temp` and queued experiments
    run in .dvc/tmp/exps/, seeds in .dvc/tmp/seeds/), else `root`: the copy's runs belong in its store."""
    parts = root.resolve().parts
    for index in range(len(parts) - 1):
        if parts[index : index + 2] == (".dvc", "tmp"):
            return Path(*parts[:index])
    return root.resolve()


def tracking_uri(cfg: TrackingSection, root: Path) -> str:
    """MLFLOW_TRACKING_URI, else `tracking.uri`, else an absolute SQLite file in the (home) repository."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    return uri or f"sqlite:///{home_repository(root) / DEFAULT_DB}"


def uri_source(cfg: TrackingSection) -> str:
    """Where the tracking URI came from: the setting to fix when it is wrong."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "the MLFLOW_TRACKING_URI environment variable"
    return "tracking.uri in params.yaml" if cfg.uri else "the default SQLite store"


def redact(text: str) -> str:
    """`text` with the password of any URI in it (scheme://user:password@host) replaced by ***."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def deps_digest(deps: dict[str, str]) -> str:
    """One md5 for a stage's dependency hashes {path: md5}: equal exactly when every dependency is."""
    return hashlib.md5(json.dumps(deps, sort_keys=True).encode()).hexdigest()


class Tracker:
    """A thin MlflowClient wrapper for one experiment."""

    def __init__(self, cfg: TrackingSection, root: Path):
        self.uri = tracking_uri(cfg, root)
        self.root = root
        self._check_reachable()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(cfg.experiment)

    def _check_reachable(self) -> None:
        """One quick try of a server or database store (MLflow itself retries a database for ~100 s)."""
        if self.uri.startswith(("http://", "https://")):
            import requests

            try:
                requests.get(self.uri.rstrip("/") + "/health", timeout=5).raise_for_status()
            except requests.RequestException as err:
                raise ConnectionError(f"MLflow server at {self.uri} is unreachable ({type(err).__name__})") from err
        elif self.uri.startswith(DATABASE_SCHEMES):
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.uri, connect_args={"connect_timeout": 5})
            try:
                with engine.connect():
                    pass
            except sqlalchemy.exc.SQLAlchemyError as err:
                reason = str(getattr(err, "orig", err) or err).strip().splitlines()[0]
                raise ConnectionError(f"database unreachable: {reason}") from None
            finally:
                engine.dispose()

    def _experiment(self, name: str) -> str:
        """The experiment's id, created on first use, marked as model training for the UI."""
        found = self.client.get_experiment_by_name(name)
        if found is not None and found.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING_KIND:
            return found.experiment_id
        if found is None:
            location = None
            if self.uri.startswith("sqlite:"):
                location = (home_repository(self.root) / DEFAULT_ARTIFACTS).as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        # NOTE: MLflow's UI reads this tag only with its workflow switch off; 3.17 opens on the address's
        # view instead (maskprune.tracking.ui prints the runs table's)
        self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment_id

    def parent_run(self) -> str:
        """The pipeline-level run this stage belongs to (found or created)."""
        if os.environ.get(PARENT_ENV):
            return os.environ[PARENT_ENV]
        key = dvc_invocation_key()
        if key:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'", max_results=1
            )
            if found:
                return found[0].info.run_id
        return self.start_pipeline_run(source="dvc repro" if key else "stage", invocation=key)

    def start_pipeline_run(self, source: str, invocation: str | None = None, flow_run_id: str = "") -> str:
        """Create a pipeline-level (parent) run tagged with its source and the git commit; returns its id."""
        tags = {"maskprune.kind": "pipeline", "maskprune.source": source, **git_tags(self.root)}
        if invocation:
            tags[INVOCATION_TAG] = invocation
        if flow_run_id:
            tags["prefect.flow_run_id"] = flow_run_id
        name = f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End run `run_id` with `status`."""
        self.client.set_terminated(run_id, status=status)

    def log_stage(self, record: StageRecord, parent_id: str) -> str:
        """Log `record` as a finished run nested under `parent_id` (registering its model, if any); returns its id."""
        deps = dvc_dep_hashes(record.stage, self.root)
        tags = {
            "mlflow.parentRunId": parent_id,
            "maskprune.kind": "stage",
            "maskprune.stage": record.stage,
            **git_tags(self.root),
            DEPS_TAG: deps_digest(deps),
            **record.tags,
        }
        if record.model_weights is not None:
            tags[WEIGHTS_TAG] = file_md5(record.model_weights)
        if os.environ.get(FLOW_RUN_ENV):
            tags["prefect.flow_run_id"] = os.environ[FLOW_RUN_ENV]
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        start = int(record.started * 1000) if record.started is not None else None
        run_id = self.client.create_run(
            self.experiment_id, start_time=start, tags=tags, run_name=record.stage
        ).info.run_id
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param(k, str(v)[:6000]) for k, v in flatten(record.params).items()]
        per_epoch = {key for row in record.history for key in row}
        # NOTE: a final metric that also has a per-epoch curve is that curve's last point already
        metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items() if k not in per_epoch]
        for row in record.history:
            step = int(row.get("epoch", 0))
            metrics += [Metric(k, float(v), now, step) for k, v in row.items() if k != "epoch"]
        for i in range(0, len(params), 100):  # MLflow's per-request limits
            self.client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        self.client.log_dict(run_id, {"dvc_deps": deps}, PROVENANCE_FILE)
        self.log_files(run_id, [*record.artifacts, *([record.model_weights] if record.model_weights else [])])
        self.log_files(parent_id, record.parent_artifacts)
        if record.register is not None:
            register_model(self.client, self.uri, run_id, record.register)
        self.finish(run_id)
        return run_id

    def log_files(self, run_id: str, paths: list[Path]) -> None:
        """Log each existing file or folder in `paths` as an artifact of run `run_id`."""
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.exists():
                self.client.log_artifact(run_id, str(path))


@contextlib.contextmanager
def pipeline_run(
    cfg: TrackingSection, root: Path, source: str, flow_run_id: str = ""
) -> Iterator[tuple[Tracker, str] | None]:
    """A parent run for the stages a flow starts: (tracker, run id), or None with tracking off.

    The run ends FINISHED with the block, or FAILED if the block raises.
    """
    if not cfg.enabled:
        yield None
        return
    tracker = Tracker(cfg, root)
    run_id = tracker.start_pipeline_run(source=source, flow_run_id=flow_run_id)
    try:
        yield tracker, run_id
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)


def log_stage(record: StageRecord, cfg: TrackingSection, root: Path) -> str | None:
    """Log a finished stage as a nested run; returns its run id (None when tracking is off).

    Call only after the stage's outputs are on disk. If tracking fails and `tracking.required`
    is true, raise a one-line error that says the outputs are safe and how to re-log them.
    """
    if not cfg.enabled:
        return None
    try:
        tracker = Tracker(cfg, root)
        parent = tracker.parent_run()
        run_id = tracker.log_stage(record, parent)
        if not os.environ.get(PARENT_ENV):
            tracker.finish(parent)
        return run_id
    except ImportError:
        problem = "mlflow is not installed"
    except Exception as err:  # noqa: BLE001 - any tracking failure must not lose the outputs
        problem = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    message = redact(
        f"tracking to {tracking_uri(cfg, root)} (from {uri_source(cfg)}) failed ({problem}); the {record.stage} "
        f"stage's outputs are complete on disk; fix that setting, then re-log them with `python -m "
        f"stages.{record.stage.replace('@', ' ')} --log-only`, or set tracking.required=false to continue without it"
    )
    if cfg.required:
        raise MaskpruneError(message)
    print(f"maskprune: warning: {message}")
    return None
