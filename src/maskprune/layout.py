"""Every pipeline path and variant name, in one place.

The stages write, and evaluate, the report, the flows and the tests read, these folders:

    data/prepared/<data.name>/               prepare
    models/teacher/                          teacher
    models/pretrain/<objective>-<loss>/      pretrain@mae-mto          (PretrainVariant)
    models/finetune/<variant>/               finetune@masked_kd        (FINETUNE_VARIANTS)
    models/prune/<method>-<init>-<keep>/     prune@evit-full-0.5       (PruneVariant)
    models/distill_teacher/                  distill_teacher           (claim C's self-supervised teacher)
    models/distill/<student>-<target>/       distill@evit-cls_tokens   (DistillVariant)
    checkpoints/<stage>/<variant>/           resumable training state of a stage run
    metrics/evaluate.json, plots/evaluate/   evaluate
    reports/                                 report

A variant's name is the part after `@` in DVC's stage name, which DVC builds from the values of
its `foreach`/`matrix` list with Python's `str`. `spell` is that spelling, so a folder the code
writes is always the folder dvc.yaml declares; params validation refuses values whose spelling
DVC and the code would not share (`PruneSection` in config.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from maskprune.config import (
    FINETUNE_VARIANTS,
    MIM_OBJECTIVES,
    PRETRAIN_LOSSES,
    PRUNING_METHODS,
    DistillSection,
    DistillStudent,
    DistillTarget,
    Params,
    PretrainSection,
    PruneSection,
)
from maskprune.errors import MaskpruneError

PREPARED_DIR = Path("data") / "prepared"
MODELS_DIR = Path("models")
CHECKPOINTS_DIR = Path("checkpoints")
TEACHER_DIR = MODELS_DIR / "teacher"
PRETRAIN_DIR = MODELS_DIR / "pretrain"
FINETUNE_DIR = MODELS_DIR / "finetune"
PRUNE_DIR = MODELS_DIR / "prune"
DISTILL_DIR = MODELS_DIR / "distill"
DISTILL_TEACHER_DIR = MODELS_DIR / "distill_teacher"
EVALUATE_FILE = Path("metrics") / "evaluate.json"
# NOTE: evaluate.json holds everything evaluate measures; the DVC metrics (dvc.yaml) are the headline
# (per model: top-1, GMACs, throughput ratio) and the report's verdicts (per claim: its word and tests)
HEADLINE_FILE = Path("metrics") / "headline.json"
VERDICTS_FILE = Path("metrics") / "verdicts.json"
PLOTS_DIR = Path("plots") / "evaluate"
REPORT_DIR = Path("reports")
REPORT_FIGURES_DIR = REPORT_DIR / "figures"
SEEDS_DIR = REPORT_DIR / "seeds"
SEED_WORKSPACES_DIR = Path(".dvc") / "tmp" / "seeds"  # one repository copy per seed; git-ignored, unseen by DVC
SWEEPS_DIR = REPORT_DIR / "sweeps"
DISTILL_HEADS = ("finetune", "probe")
STUDENTS: tuple[str, ...] = get_args(DistillStudent)
TARGETS: tuple[str, ...] = get_args(DistillTarget)


def spell(value: float | str) -> str:
    """A matrix value as DVC writes it into a stage name (`str`): 0.5 -> '0.5', 1.0 -> '1.0'."""
    return str(value)


def prepared_dir(data_name: str) -> Path:
    """The prepared dataset `data.name`."""
    return PREPARED_DIR / data_name


def model_name(folder: Path | str) -> str | None:
    """A model folder's name in the results, its path under models/ ('prune/evit-full-0.5'); None outside models/."""
    path = Path(folder)
    if path.is_absolute() or not path.is_relative_to(MODELS_DIR):
        return None
    return path.relative_to(MODELS_DIR).as_posix()


def matrix_item(
    text: str,
    stage: str,
    names: tuple[str, str],
    choices: tuple[Sequence[str], Sequence[str]],
) -> tuple[str, str]:
    """The two parts of a DVC matrix item '<a>-<b>' (e.g. 'mae-mto'), each checked against its choices."""
    first, _, second = text.partition("-")
    if first not in choices[0] or second not in choices[1]:
        raise MaskpruneError(
            f"{stage} variant {text!r} is not <{names[0]}>-<{names[1]}> with {names[0]} in "
            f"{tuple(choices[0])} and {names[1]} in {tuple(choices[1])}"
        )
    return first, second


@dataclass(frozen=True)
class PretrainVariant:
    """One pretrain stage: a masked-image-modelling objective with or without MTO."""

    objective: str
    loss: str

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.loss}"

    @property
    def folder(self) -> Path:
        return PRETRAIN_DIR / self.name

    @classmethod
    def parse(cls, text: str) -> PretrainVariant:
        """'<objective>-<loss>' as DVC's matrix names it, e.g. 'mae-mto'."""
        return cls(*matrix_item(text, "pretrain", ("objective", "loss"), (MIM_OBJECTIVES, PRETRAIN_LOSSES)))


@dataclass(frozen=True)
class PruneVariant:
    """One prune stage: a token-pruning method trained from a finetune variant at a keep rate."""

    method: str
    init: str
    keep_rate: float

    @property
    def name(self) -> str:
        return f"{self.method}-{self.init}-{spell(self.keep_rate)}"

    @property
    def folder(self) -> Path:
        return PRUNE_DIR / self.name

    @classmethod
    def parse(cls, text: str) -> PruneVariant:
        """'<method>-<init>-<keep>' as DVC's matrix names it, e.g. 'evit-masked-0.5'."""
        method, _, rest = text.partition("-")
        init, _, keep = rest.rpartition("-")
        try:
            rate = float(keep)
        except ValueError:
            rate = -1.0
        if (
            method not in PRUNING_METHODS
            or init not in FINETUNE_VARIANTS
            or not 0.0 < rate <= 1.0
            or spell(rate) != keep
        ):
            raise MaskpruneError(
                f"prune variant {text!r} is not <method>-<init>-<keep> with method in "
                f"{PRUNING_METHODS}, init in {FINETUNE_VARIANTS} and keep in (0, 1] spelled as Python writes it"
            )
        return cls(method, init, rate)


@dataclass(frozen=True)
class DistillVariant:
    """One distill stage: a ViT or EViT student distilled towards the teacher's [CLS] or tokens."""

    student: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.student}-{self.target}"

    @property
    def folder(self) -> Path:
        return DISTILL_DIR / self.name

    @classmethod
    def parse(cls, text: str) -> DistillVariant:
        """'<student>-<target>' as DVC's matrix names it, e.g. 'evit-cls_tokens'."""
        return cls(*matrix_item(text, "distill", ("student", "target"), (STUDENTS, TARGETS)))


def pretrain_variants(cfg: PretrainSection) -> list[PretrainVariant]:
    """The pretrain matrix: each objective with and without MTO."""
    return [PretrainVariant(o, loss) for o in cfg.objectives for loss in PRETRAIN_LOSSES]


def prune_variants(cfg: PruneSection) -> list[PruneVariant]:
    """The prune matrix: method x init x keep rate."""
    return [PruneVariant(m, i, k) for m in PRUNING_METHODS for i in cfg.inits for k in cfg.keep_rates]


def distill_variants(cfg: DistillSection) -> list[DistillVariant]:
    """The distill matrix: student x target."""
    return [DistillVariant(s, t) for s in cfg.students for t in cfg.targets]


def pipeline_models(params: Params) -> list[str]:
    """Folders under models/ that the pipeline in params.yaml produces, in pipeline order."""
    return [
        TEACHER_DIR.name,
        *(f"{PRETRAIN_DIR.name}/{v.name}" for v in pretrain_variants(params.pretrain)),
        *(f"{FINETUNE_DIR.name}/{v}" for v in FINETUNE_VARIANTS),
        DISTILL_TEACHER_DIR.name,
        *(f"{PRUNE_DIR.name}/{v.name}" for v in prune_variants(params.prune)),
        *(f"{DISTILL_DIR.name}/{v.name}/{head}" for v in distill_variants(params.distill) for head in DISTILL_HEADS),
    ]
