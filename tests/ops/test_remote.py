"""DVC remotes: `dvc push`, then `dvc pull` into a fresh clone restores data and models bit for bit.

The default remote (.dvc/config) is a local folder beside the repository; an S3-compatible remote
is moto's S3 server on 127.0.0.1, configured the way the README says (endpoint in
.dvc/config.local, credentials in the environment, nothing in the repository).
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import VENV_BIN, copy_run, run, subprocess_env
from tests.services import free_port, http_ok, service

pytestmark = pytest.mark.integration
AWS = {
    "AWS_ACCESS_KEY_ID": "maskprune-test",
    "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def origin(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reproduced smoke run (committed, dvc.lock and all) in a folder of its own."""
    return copy_run(smoke_run, tmp_path_factory.mktemp("remote") / "origin")


def tracked(repo: Path) -> dict[str, str]:
    """sha256 of every file DVC tracks in the cache: prepared data and model weights."""
    files = [
        *(repo / "data" / "prepared").rglob("*"),
        *(repo / "models").rglob("*.safetensors"),
        *(repo / "models").rglob("meta.json"),
    ]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def fresh_clone(origin: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    # the teachers are committed to git (trained once for every seed); the rest comes from the remote
    assert (dest / "models" / "teacher" / "model.safetensors").exists()
    assert not (dest / "models" / "finetune" / "full" / "model.safetensors").exists()
    return dest


def test_default_local_remote_round_trips_data_and_models(origin: Path) -> None:
    """`make pull` (python -m maskprune.remote) in a fresh clone: one line saying what to do while nothing
    was pushed, then `dvc pull` once the origin has pushed."""
    storage = origin.parent / "maskprune-dvc-storage"  # .dvc/config: ../../maskprune-dvc-storage
    clone = fresh_clone(origin, origin.parent / "clone")
    pull = [sys.executable, "-m", "maskprune.remote"]
    early = subprocess.run(pull, cwd=clone, env=subprocess_env(PYTHONPATH="src"), capture_output=True, text=True)
    assert (early.returncode, early.stderr) == (
        2,
        f"maskprune: error: the DVC remote 'local' ({storage}) does not exist: no one has run `dvc push` to it; "
        "build the outputs here with `make run`, or point the remote at your team's store (docs/operations.md)\n",
    )
    assert not storage.exists()  # NOTE: nothing created on the way
    run(["dvc", "push"], origin)
    assert storage.is_dir() and any(storage.rglob("*"))
    run(pull, clone, PYTHONPATH="src")
    expected = tracked(origin)
    assert len(expected) > 20 and tracked(clone) == expected
    assert "up to date" in run(["dvc", "status"], clone).stdout


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(Path(VENV_BIN) / "moto_server"), "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with service("moto S3 server", cmd, http_ok(url), tmp_path_factory.mktemp("moto") / "moto.log"):
        boto3.client(
            "s3",
            endpoint_url=url,
            **{k.lower(): v for k, v in AWS.items() if k != "AWS_DEFAULT_REGION"},
            region_name="us-east-1",
        ).create_bucket(Bucket="maskprune")
        yield url


def configure_s3(repo: Path, endpoint: str) -> None:
    run(["dvc", "remote", "add", "--local", "s3", "s3://maskprune/store"], repo)
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], repo)


def test_s3_compatible_remote_round_trips_with_credentials_from_the_environment(origin: Path, s3_endpoint: str) -> None:
    configure_s3(origin, s3_endpoint)
    run(["dvc", "push", "-r", "s3"], origin, **AWS)
    clone = fresh_clone(origin, origin.parent / "clone-s3")
    configure_s3(clone, s3_endpoint)
    run(["dvc", "pull", "-r", "s3"], clone, **AWS)
    assert tracked(clone) == tracked(origin)
    found = subprocess.run(["git", "grep", "-I", "-l", AWS["AWS_SECRET_ACCESS_KEY"]], cwd=origin, capture_output=True)
    assert found.returncode == 1 and not found.stdout  # no credential is in the repository's files


def test_s3_remote_round_trips_sharded_data(smoke_run: Path, s3_endpoint: str, tmp_path: Path) -> None:
    repo = copy_run(smoke_run, tmp_path / "sharded")
    params = (repo / "params.yaml").read_text()
    assert "  storage: auto\n" in params
    (repo / "params.yaml").write_text(params.replace("  storage: auto\n", "  storage: shards\n"))
    run(["dvc", "repro", "--single-item", "prepare"], repo)
    shards = sorted((repo / "data/prepared/fashion_mnist").glob("*.tar"))
    assert shards and (repo / "data/prepared/fashion_mnist/train.index.npy").is_file()
    run(["git", "commit", "-q", "-am", "sharded data"], repo)
    configure_s3(repo, s3_endpoint)
    run(["dvc", "push", "-r", "s3", "prepare"], repo, **AWS)
    clone = fresh_clone(repo, tmp_path / "clone")
    configure_s3(clone, s3_endpoint)
    run(["dvc", "pull", "-r", "s3", "prepare"], clone, **AWS)
    prepared = {k: v for k, v in tracked(repo).items() if k.startswith("data/")}
    assert len(prepared) == len(shards) + 4  # the shards, an index per split, meta.json
    assert {k: v for k, v in tracked(clone).items() if k.startswith("data/")} == prepared
    assert "up to date" in run(["dvc", "status", "prepare"], clone).stdout
