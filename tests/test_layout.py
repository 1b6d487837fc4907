"""Pipeline paths and variant names (maskprune.layout): parsing, refusing, spelling."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from maskprune.config import validate_params
from maskprune.errors import MaskpruneError
from maskprune.layout import DistillVariant, PretrainVariant, PruneVariant, prune_variants
from tests.conftest import REPO, cpu_params, run


def test_variant_names_parse_and_refuse_unknown_ones() -> None:
    assert PretrainVariant.parse("simmim-mto") == PretrainVariant("simmim", "mto")
    with pytest.raises(MaskpruneError, match="not <objective>-<loss>"):
        PretrainVariant.parse("mae-mtoo")


def test_prune_variant_names_parse_and_bad_ones_are_refused() -> None:
    assert PruneVariant.parse("evit-masked_kd-0.5") == PruneVariant("evit", "masked_kd", 0.5)
    assert PruneVariant("dynamicvit", "full", 0.7).name == "dynamicvit-full-0.7"
    for bad in ("tome-full-0.5", "evit-half-0.5", "evit-full-1.5", "evit-full-x"):
        with pytest.raises(MaskpruneError, match="is not <method>-<init>-<keep>"):
            PruneVariant.parse(bad)


def test_distill_variant_names() -> None:
    assert DistillVariant.parse("evit-cls_tokens") == DistillVariant("evit", "cls_tokens")
    for bad in ("deit-cls", "vit-tokens", "vit"):
        with pytest.raises(MaskpruneError, match="is not <student>-<target>"):
            DistillVariant.parse(bad)


def test_keep_rates_are_spelled_as_dvc_names_its_stages(tmp_path: Path) -> None:
    """DVC's own stage names (`dvc stage list`) for keep rates 1.0 and 0.35 are the folders the code writes."""
    params = cpu_params().model_dump()
    params["prune"]["keep_rates"] = [1.0, 0.5, 0.35]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp_path)
    listed = run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], tmp_path).stdout.split()
    dvc_names = sorted(name.split("@", 1)[1] for name in listed if name.startswith("prune@"))
    ours = sorted(v.name for v in prune_variants(validate_params(params).prune))
    assert dvc_names == ours
    assert "evit-full-1.0" in ours and "dynamicvit-masked-0.35" in ours
    assert PruneVariant.parse("evit-full-1.0").folder == Path("models/prune/evit-full-1.0")


@pytest.mark.parametrize("value", [1, "0.50", "1.0", True, 1.0e-9])  # NOTE: DVC would name it 1e-09
def test_keep_rates_that_dvc_would_spell_otherwise_are_refused_in_one_line(value: object) -> None:
    params = cpu_params().model_dump()
    params["prune"]["keep_rates"] = [value]
    with pytest.raises(MaskpruneError, match=r"^params.yaml: prune.keep_rates: write each keep rate as a decimal"):
        validate_params(params)
    with pytest.raises(MaskpruneError, match="spelled as Python writes it"):
        PruneVariant.parse("evit-full-0.50")
