"""params.yaml: schema, validation and loading.

Every section of params.yaml is a pydantic model with `extra="forbid"`: types, bounds and what each
key means. The recipes live in profiles/*.yaml (`cpu.yaml` sets every key; the other profiles
override it), and `python -m maskprune.profile NAME` writes a profile's full parameter set to
params.yaml so that DVC sees every value a stage uses. Loading refuses a params.yaml that lacks a
key, so no hidden default can change a result behind DVC's back.

NOTE: a key has a default here only where its value is a convention, not a recipe choice: the seeds
(0), where and how a run executes and is recorded (`runtime`, `tracking`), no pretrained weights file
('') and inputs standardised as such weights expect (`normalize: auto`), the methods' own pruning
blocks (`prune.locations: []`), plain soft-label KD (`kind: soft`, `temperature: 1`), MTO's
numerical `eps` and 95% confidence intervals. Epochs, learning rates, batch
sizes, limits, models, data, keep and mask rates, loss weights and the rest have none: a recipe value
comes from a profile.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from maskprune.errors import MaskpruneError
from maskprune.masking import Criterion, HybridRatios, check_keep_ratio

PARAMS_FILE = "params.yaml"
PRETRAINED_DIR = "pretrained"  # the tracked folder of local pretrained weights (a DVC dependency)
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
ProfileName = Literal["smoke", "cpu", "gpu", "gpu-check", "paper"]
PROFILES: tuple[str, ...] = get_args(ProfileName)
REGENERATE = "run `python -m maskprune.profile {profile}` or add {it}: DVC must see every parameter"
# NOTE: said after a bad value in params.yaml, which a profile switch rewrites: the user's values live elsewhere
GENERATED = (
    "params.yaml is written by `python -m maskprune.profile {profile}`: set your value in params.local.yaml "
    "(or profiles/{profile}.yaml) and rerun that"
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataSection(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["idx", "cifar10", "imagefolder", "webdataset"]
    root: str
    val_fraction: float = Field(gt=0.0, lt=1.0)
    train_limit: int = Field(ge=0, description="0 keeps every training image")
    test_limit: int = Field(ge=0, description="0 keeps every test image")
    seed: int = Field(0, ge=0, description="the train/val split and the subsets (fixed across a seed sweep)")
    storage: Literal["auto", "memory", "shards"] = Field(
        description="memory = uint8 arrays loaded whole; shards = tar shards of the encoded images, "
        "streamed by loader workers; auto = memory when the arrays fit memory_budget_gb and share one size"
    )
    memory_budget_gb: float = Field(gt=0.0, description="auto's limit on the in-memory arrays of all splits")
    image_size: int = Field(
        ge=0, description="shards: the side images are cropped to (e.g. 224); 0 = their own size, when all share one"
    )
    shard_mb: float = Field(gt=0.0, description="shards: target size of one tar shard, in MB (WebDataset's 256)")
    skip_unreadable: bool = Field(
        description="false: an unreadable or corrupt image stops prepare; true: it is skipped and listed in meta.json"
    )
    train_crop: Literal["shift", "random_resized"] = Field(
        description="shards, with train.augment: shift = the image (eval crop) shifted by up to 2 pixels; "
        "random_resized = Inception-style random-resized crop (DeiT), in the loader workers"
    )
    crop_scale: list[float] = Field(
        description="random_resized: [low, high], the crop's area as a fraction of the image"
    )
    rand_augment: str = Field(
        description="with train_crop random_resized: timm's RandAugment config (DeiT's rand-m9-mstd0.5-inc1); '' = off"
    )
    eval_crop_pct: float = Field(
        gt=0.0,
        le=1.0,
        description="shards: evaluation resizes the short side to image_size / eval_crop_pct, then centre-crops "
        "(a model with a pretrained_file and normalize auto uses its pretrained crop_pct instead)",
    )

    @model_validator(mode="after")
    def _crops(self) -> DataSection:
        if self.rand_augment and self.train_crop != "random_resized":
            raise ValueError(
                "rand_augment runs in the loader with the random-resized crop: set train_crop: random_resized"
            )
        if self.rand_augment and not self.rand_augment.startswith("rand"):
            raise ValueError(
                f"rand_augment {self.rand_augment!r} is not a timm RandAugment config such as rand-m9-mstd0.5-inc1"
            )
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1 (got {list(self.crop_scale)})")
        return self


class ModelSpec(Section):
    name: str
    img_size: int = Field(ge=8)
    patch_size: int = Field(ge=1)
    drop_path_rate: float = Field(ge=0.0, lt=1.0)
    pretrained_file: str = Field(
        "",
        description=f"local timm weights (.safetensors) under {PRETRAINED_DIR}/, relative to the repository; '' = none",
    )
    normalize: Literal["auto", "data"] = Field(
        "auto",
        description="the inputs' mean/std and evaluation crop_pct: auto = the pretrained weights' own (timm's "
        "pretrained config of the name and tag) when pretrained_file is set, else the prepared data's "
        "(data.eval_crop_pct); data = the data's always",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from maskprune.models.vit import check_model_name

        check_model_name(name)
        return name

    @field_validator("pretrained_file")
    @classmethod
    def _tracked_file(cls, value: str) -> str:
        parts = PurePosixPath(value).parts
        if value and (len(parts) < 2 or parts[0] != PRETRAINED_DIR or ".." in parts):
            raise ValueError(
                f"give a file under {PRETRAINED_DIR}/, such as {PRETRAINED_DIR}/deit_small_patch16_224.safetensors: "
                "the stages depend on that folder, so DVC reruns them when the weights change"
            )
        return value

    @model_validator(mode="after")
    def _grid(self) -> ModelSpec:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        return self


class ModelsSection(Section):
    student: ModelSpec
    teacher: ModelSpec

    @model_validator(mode="after")
    def _same_grid(self) -> ModelsSection:
        s, t = self.student, self.teacher
        if (s.img_size // s.patch_size) != (t.img_size // t.patch_size):
            raise ValueError(
                "student and teacher patch grids differ "
                f"({s.img_size // s.patch_size} vs {t.img_size // t.patch_size} patches per side); "
                "give both the same img_size/patch_size ratio"
            )
        return self


class RuntimeSection(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    # NOTE: no on/off/yes/no values: YAML 1.1 (PyYAML) reads them as booleans, YAML 1.2 (DVC) not.
    amp: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto = bf16 on CUDA; on a CPU with native bf16 (AMX or AVX512-BF16) bf16 for inference "
        "and fp32 for training steps (measured faster there), else fp32",
    )
    compile: bool = False
    progress: Literal["auto", "always", "never"] = Field("auto", description="auto = bar on a terminal")
    loader_workers: int = Field(
        0,
        ge=0,
        description="sharded data: decoding processes per training process; 0 = auto: on CUDA cores / processes "
        "(at most 8), on a CPU none (decoded in the training process, measured faster there)",
    )
    nproc_per_node: Literal["auto"] | PositiveInt = Field(
        "auto",
        description="training processes per machine (torchrun, DDP); auto = every visible GPU, 1 on a CPU",
    )
    nnodes: PositiveInt = Field(1, description="machines that train one stage together (each runs the same command)")
    rdzv_endpoint: str = Field("", description="host:port of torchrun's c10d rendezvous; needed with nnodes > 1")
    max_restarts: NonNegativeInt = Field(
        0, description="torchrun restarts every process this often after a failure; each resumes from its checkpoint"
    )
    checkpoint_dir: str = Field("", description="'' = <repo>/checkpoints; with nnodes > 1 a folder every machine sees")


class TrackingSection(Section):
    enabled: bool = True
    uri: str = Field("", description="'' = sqlite:///<repo>/mlflow.db; MLFLOW_TRACKING_URI wins")
    experiment: str = Field("maskprune", min_length=1)
    required: bool = Field(True, description="fail the stage if tracking is unreachable")
    registered_model: str = Field(
        "maskprune-pruned",
        min_length=1,
        description="registry name of the best pruned model (the report stage)",
    )
    model_alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$", description="alias of its newest version")


class TrainSection(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    min_lr: float = Field(ge=0.0)
    weight_decay: float = Field(ge=0.0)
    warmup_epochs: float = Field(ge=0.0)
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    grad_clip: float = Field(ge=0.0, description="max gradient norm; 0 = off")
    augment: bool
    mixup: float = Field(ge=0.0, description="mixup's Beta alpha (timm's Mixup, per batch on the device); 0 = off")
    cutmix: float = Field(ge=0.0, description="cutmix's Beta alpha (with mixup: either, half the time each); 0 = off")
    random_erasing: float = Field(ge=0.0, le=1.0, description="probability of timm's RandomErasing per image; 0 = off")
    repeated_aug: int = Field(ge=1, description="each image this many times an epoch, each augmented anew (DeiT: 3)")

    @model_validator(mode="after")
    def _schedule(self) -> TrainSection:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is larger than lr {self.lr}")
        if self.epochs and self.warmup_epochs > self.epochs:  # NOTE: 0 epochs (a teacher as it is) run no schedule
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        return self


class TeacherSection(TrainSection):
    """The teacher's recipe and its own seed: a seed sweep varies the students, not the teacher."""

    epochs: int = Field(ge=0, description="0 = no training: the teacher from `init` is evaluated and used as it is")
    init: str = Field(
        description="scratch | pretrained_file | a model folder, e.g. models/distill_teacher (its MAE pre-training)"
    )
    seed: int = Field(0, ge=0)


class FinetuneTrain(TrainSection):
    train_limit: int = Field(ge=0, description="train on a seeded subset of this many images; 0 = all")


class HybridMasking(Section):
    """The student's keep ratio per batch: drawn from `keep_ratios` with `probs`."""

    keep_ratios: list[float]
    probs: list[float]

    @model_validator(mode="after")
    def _hybrid_set(self) -> HybridMasking:
        HybridRatios(self.keep_ratios, self.probs)  # raises ValueError with the reason
        return self


class KDSection(Section):
    alpha: float = Field(ge=0.0, le=1.0, description="weight of the KD term")
    temperature: float = Field(1.0, gt=0.0)
    kind: Literal["soft", "hard"] = "soft"


# NOTE: the arms of claims A and B, in dependency order: `masked` distils from `full`
FinetuneVariant = Literal["full", "full_kd", "masked_kd", "random_kd", "masked"]
PruningMethod = Literal["evit", "dynamicvit"]
PRUNING_METHODS: tuple[str, ...] = get_args(PruningMethod)
FINETUNE_VARIANTS: tuple[str, ...] = get_args(FinetuneVariant)


class NoSettings(Section):
    """An arm with nothing of its own to set: it runs on the shared recipe alone."""


class MaskedKDVariant(HybridMasking):
    teacher_keep: float = Field(description="fraction of patches the teacher sees")
    criterion: Criterion

    _keep = field_validator("teacher_keep")(check_keep_ratio)


class FinetuneSection(Section):
    """The finetune stage: a shared recipe and init, then one section per arm.

    Arms: `full` (labels only: B's no-KD arm, A's full init), `full_kd` (KD from models/teacher on
    full images), `masked_kd` (the teacher sees `teacher_keep` of the patches the student attends
    to), `random_kd` (the teacher sees as many random patches: MaskedKD's random-mask control) and
    `masked` (masked fine-tuning, distilled from the fine-tuned `full` as in Shi & Wang).
    """

    init: str = Field(description="scratch | pretrained_file | path to a maskprune model folder")
    train: FinetuneTrain
    kd: KDSection
    full: NoSettings = NoSettings()
    full_kd: NoSettings = NoSettings()
    masked_kd: MaskedKDVariant
    random_kd: NoSettings = Field(NoSettings(), description="runs at masked_kd.teacher_keep with random patches")
    masked: HybridMasking

    @field_validator("init")
    @classmethod
    def _init(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give scratch, pretrained_file or the path of a maskprune model folder")
        return value


# NOTE: the keys a pruning method may set apart from prune.train: its optimiser's, never the data it
# sees or for how long, so the methods' arms stay comparable (EViT fine-tunes at lr 2e-5, DynamicViT at 1e-3)
METHOD_TRAIN_KEYS = ("lr", "min_lr", "weight_decay", "warmup_epochs")
METHOD_TRAIN = Field(description=f"this method's own values of prune.train's {', '.join(METHOD_TRAIN_KEYS)}")


class EViTSection(Section):
    fuse_token: bool = Field(description="sum the dropped tokens into one, weighted by [CLS] attention")
    keep_warmup_epochs: float = Field(ge=0.0, description="cosine warm-up of the keep rate from 1.0")
    train: dict[str, float] = METHOD_TRAIN


class DynamicViTSection(Section):
    ratio_weight: float = Field(ge=0.0, description="weight of the kept-ratio MSE")
    kd_weight: float = Field(ge=0.0, description="weight of KL(teacher || student) on logits")
    token_weight: float = Field(ge=0.0, description="weight of the kept-token MSE to the unpruned init")
    backbone_lr_scale: float = Field(gt=0.0, le=1.0, description="backbone lr / scorer lr")
    freeze_epochs: float = Field(ge=0.0, description="backbone lr is 0 for these epochs")
    train: dict[str, float] = METHOD_TRAIN


class PruneSection(Section):
    """The prune stage: a matrix method x init x keep rate over the finetune variants."""

    inits: list[FinetuneVariant] = Field(min_length=1, description="finetune variants to start from")
    keep_rates: list[float] = Field(
        min_length=1,
        description="decimal numbers such as 0.5 or 1.0: DVC names each prune stage and its folder from this spelling",
    )
    locations: list[int] = Field(
        default_factory=list, description="0-indexed pruning blocks; [] = at 1/4, 1/2, 3/4 of depth"
    )
    train: FinetuneTrain
    kd: KDSection
    evit: EViTSection
    dynamicvit: DynamicViTSection

    @field_validator("keep_rates", mode="before")
    @classmethod
    def _keep_rate_spelling(cls, values: object) -> object:
        # NOTE: DVC names prune@<method>-<init>-<keep> from the YAML value as written (1 -> '1',
        # '0.50' -> '0.50'); the code names the folder from the float ('1.0', '0.5'). Only a YAML
        # float is spelled the same way by both (maskprune.layout.spell).
        for value in values if isinstance(values, list) else []:
            if not isinstance(value, float) or "e" in repr(value):
                raise ValueError(
                    f"write each keep rate as a decimal number such as 0.5 or 1.0, not {value!r}: "
                    "DVC names each prune stage and its folder from this spelling"
                )
        return values

    @field_validator("keep_rates")
    @classmethod
    def _keep_rates(cls, values: list[float]) -> list[float]:
        for value in values:
            check_keep_ratio(value)
        if len(set(values)) != len(values):
            raise ValueError(f"{values} lists a keep rate twice")
        return values

    @field_validator("locations")
    @classmethod
    def _locations(cls, values: list[int]) -> list[int]:
        if any(v < 0 for v in values) or values != sorted(set(values)):
            raise ValueError(f"give strictly increasing 0-indexed block numbers, got {values}")
        return values

    @model_validator(mode="after")
    def _method_train(self) -> PruneSection:
        for method in ("evit", "dynamicvit"):
            unknown = sorted(set(getattr(self, method).train) - set(METHOD_TRAIN_KEYS))
            if unknown:
                raise ValueError(
                    f"{method}.train sets {', '.join(unknown)}; a method may set only {', '.join(METHOD_TRAIN_KEYS)} "
                    "(the rest of prune.train is every method's)"
                )
            self.train_for(method)  # NOTE: its values pass prune.train's checks
        return self

    def train_for(self, method: str) -> FinetuneTrain:
        """prune.train with `method`'s own optimiser values."""
        overrides = getattr(self, method).train
        return FinetuneTrain.model_validate({**self.train.model_dump(), **overrides}) if overrides else self.train


class ProbeSection(Section):
    """A linear classifier on frozen [CLS] features (standardised), trained with AdamW."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)


MIMMethod = Literal["mae", "simmim"]
MIM_OBJECTIVES: tuple[str, ...] = get_args(MIMMethod)
PRETRAIN_LOSSES: tuple[str, ...] = ("baseline", "mto")


def check_mask_ratio(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError("mask ratio must lie strictly between 0 and 1")
    return value


class MAESection(Section):
    """MAE: the encoder sees the visible patches only; a light decoder predicts the masked ones."""

    mask_ratio: float = Field(description="fraction of patches masked (removed from the encoder)")
    decoder_dim: int = Field(ge=4, description="decoder width; at most the encoder's")
    decoder_depth: int = Field(ge=1)
    decoder_heads: int = Field(ge=1)
    norm_pix_loss: bool = Field(description="targets: each patch standardised by its own mean and std")

    _ratio = field_validator("mask_ratio")(check_mask_ratio)


class SimMIMSection(Section):
    """SimMIM: masked patches replaced by a mask token in the encoder; a linear pixel head."""

    mask_ratio: float = Field(description="fraction of patches replaced by the mask token")

    _ratio = field_validator("mask_ratio")(check_mask_ratio)


RankDirection = Literal["falling", "printed"]


class MTOSection(Section):
    """MTO's loss weights; 0 leaves a term out of the loss (it is still measured)."""

    spa_weight: float = Field(ge=0.0, description="weight of L_spa (summed entropy over visible rows)")
    e_weight: float = Field(ge=0.0, description="weight of L_e = 1 / (H_0 + eps)")
    r_weight: float = Field(ge=0.0, description="weight of L_r, which orders H_l across layers")
    rank_direction: RankDirection = Field(
        description="L_r's sign: falling = H falls with depth (the paper's text), printed = Eq. 7 as printed"
    )
    eps: float = Field(1e-6, gt=0.0)


class PretrainProbe(ProbeSection):
    """The per-epoch linear probe on frozen encoder features (train subset -> test split)."""

    pool: Literal["mean", "cls", "tokens"] = Field(
        description="mean of the patch tokens, [CLS], or every patch token side by side"
    )
    train_limit: int = Field(ge=0, description="training images the probe fits on (seeded); 0 = all")
    test_limit: int = Field(ge=0, description="test images it is scored on (seeded); 0 = all")


class PretrainSection(Section):
    """The pretrain stage: a matrix objective x {baseline, mto}; its encoder initialises finetune."""

    objectives: list[MIMMethod] = Field(min_length=1, description="the MIM objectives to pre-train with")
    train: FinetuneTrain
    mae: MAESection
    simmim: SimMIMSection
    baseline: NoSettings = Field(NoSettings(), description="the objective alone (the MTO terms are still measured)")
    mto: MTOSection
    probe: PretrainProbe

    @field_validator("objectives")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"objectives must not repeat, got {values}")
        return values


DistillStudent = Literal["vit", "evit"]
# NOTE: `scratch` is claim C's control: the student fine-tuned with labels, never distilled
DistillTarget = Literal["cls", "cls_tokens", "scratch"]


class DistillSection(Section):
    """Task-agnostic KD: a teacher's features into ViT and EViT students, without labels."""

    teacher: str = Field(
        min_length=1, description="teacher model folder: models/distill_teacher (its own MAE) or a pretrain variant"
    )
    teacher_train: FinetuneTrain = Field(description="MAE pre-training of models.teacher as models/distill_teacher")
    students: list[DistillStudent] = Field(min_length=1)
    targets: list[DistillTarget] = Field(min_length=1)
    keep_rate: float = Field(description="the EViT student's keep rate")
    loss: Literal["mse", "cosine"]
    train: FinetuneTrain
    probe: ProbeSection
    finetune: FinetuneTrain

    _keep = field_validator("keep_rate")(check_keep_ratio)


class EvaluateSection(Section):
    batch_size: int = Field(ge=1)
    occlusion_drop: list[float] = Field(
        min_length=1, description="fractions of patches removed at random, one point of each occlusion curve"
    )
    occlusion_limit: int = Field(ge=0, description="test images per occlusion curve (seeded subset); 0 = all")
    throughput_batch: int = Field(ge=1, description="images per timed batch")
    throughput_warmup: int = Field(ge=0)
    throughput_repeats: int = Field(ge=1)
    token_images: int = Field(ge=1, le=64, description="test images whose kept patches the report draws")
    rauc_epochs: list[list[int]] = Field(
        min_length=1, description="[E1, E2] pairs for pretrain RAUC; E2 = 0 means the last epoch"
    )

    @field_validator("rauc_epochs")
    @classmethod
    def _rauc_ranges(cls, values: list[list[int]]) -> list[list[int]]:
        for pair in values:
            if len(pair) != 2 or pair[0] < 1 or (pair[1] != 0 and pair[1] <= pair[0]):
                raise ValueError(f"each range is [E1, E2] with 1 <= E1 < E2 (or E2 = 0 for the last epoch), got {pair}")
        return values

    @field_validator("occlusion_drop")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0.0 <= v < 1.0]
        if bad:
            raise ValueError(f"fractions must lie in [0, 1), got {bad}")
        if values != sorted(set(values)):
            raise ValueError("fractions must be strictly increasing")
        return values


class Rule(Section):
    """A pre-registered decision rule: the claim's primary setting and the smallest effect that matters."""

    source: str = Field(min_length=1, description="where the setting and threshold come from")


class MaskedFinetuningRule(Rule):
    """A: pruned top-1 from the masked init minus from the full init > min_effect (directional)."""

    method: PruningMethod
    keep_rate: float
    min_effect: float = Field(ge=0.0, lt=1.0)


class MaskedKDRule(Rule):
    """B: MaskedKD minus full-image KD > -margin (non-inferiority), and full-image KD minus no KD > kd_gain."""

    margin: float = Field(ge=0.0, lt=1.0)
    kd_gain: float = Field(ge=0.0, lt=1.0)


class TaskAgnosticRule(Rule):
    """C: the EViT student minus the ViT student > -margin; each distilled student minus its scratch twin > 0."""

    target: DistillTarget
    margin: float = Field(ge=0.0, lt=1.0)


class MTORule(Rule):
    """D: RAUC(baseline, MTO) over the whole run > min_rauc, per MIM objective."""

    min_rauc: float


class RulesSection(Section):
    masked_finetuning: MaskedFinetuningRule
    maskedkd: MaskedKDRule
    task_agnostic: TaskAgnosticRule
    mto: MTORule


def _fraction(description: str) -> Any:
    """A field holding a fraction in [0, 1)."""
    return Field(ge=0.0, lt=1.0, description=description)


class ChecksSection(Section):
    """The preconditions every verdict is checked against, per seed (the report says which failed)."""

    teacher_gap: float = _fraction("the teacher's top-1 over the no-KD student's, at least")
    plateau_slope: float = _fraction(
        "the least-squares slope of validation top-1 over the last quarter of epochs (>= 3), per epoch, at most"
    )
    keep_tolerance: float = _fraction(
        "|realised keep - target|, at most: DynamicViT's in training; A's pruned arms' at inference, per pruning block"
    )
    gmacs_tolerance: float = _fraction("|compared GMACs ratio - 1|, at most")
    floor_gap: float = _fraction(
        "D: the baseline's probe over each floor (raw pixels, a random-init encoder), at least"
    )
    collapse_fraction: float = Field(
        gt=0.0,
        lt=1.0,
        description="D: MTO's last-layer H under this share of its maximum (ln of the visible tokens) while its "
        "reconstruction loss ends above the baseline's = collapsed",
    )
    chance_fraction: float = _fraction("every model above chance + this fraction of the way to 100%")


class ReportSection(Section):
    """How the report aggregates seeds and decides its verdicts."""

    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="of the intervals; alpha = 1 - confidence")
    rules: RulesSection
    checks: ChecksSection


def _weights_for_init(key: str, init: str, role: str, weights: str, fix: str) -> None:
    """An init of 'pretrained_file' needs models.<role>.pretrained_file; one line naming both if it is empty."""
    if init == "pretrained_file" and not weights:
        raise ValueError(
            f"{key} is 'pretrained_file' but models.{role}.pretrained_file is empty; "
            f"set the local weights file or {fix}"
        )


class Params(Section):
    profile: ProfileName
    seed: int = Field(0, ge=0, description="the students' seed (pretrain, finetune, prune, distill, evaluate)")
    data: DataSection
    models: ModelsSection
    runtime: RuntimeSection = RuntimeSection()
    tracking: TrackingSection = TrackingSection()
    teacher: TeacherSection
    pretrain: PretrainSection
    finetune: FinetuneSection
    prune: PruneSection
    distill: DistillSection
    evaluate: EvaluateSection
    report: ReportSection

    @model_validator(mode="after")
    def _rules_in_pipeline(self) -> Params:
        rules = self.report.rules
        if rules.masked_finetuning.keep_rate not in self.prune.keep_rates:
            raise ValueError(
                f"report.rules.masked_finetuning.keep_rate {rules.masked_finetuning.keep_rate} is not in "
                f"prune.keep_rates {self.prune.keep_rates}; add it there or change the rule"
            )
        target = rules.task_agnostic.target
        if target == "scratch" or target not in self.distill.targets:
            raise ValueError(
                f"report.rules.task_agnostic.target {target!r} must be a distillation target listed in "
                f"distill.targets {self.distill.targets}; add it there or change the rule"
            )
        return self

    @model_validator(mode="after")
    def _keep_rates_keep_patches(self) -> Params:
        from maskprune.models.pruned import check_keeps_a_patch, pruning_blocks
        from maskprune.models.vit import model_depth

        student = self.models.student
        stages = len(pruning_blocks(model_depth(student.name), self.prune.locations))
        for keep in self.prune.keep_rates:
            try:
                check_keeps_a_patch(keep, (student.img_size // student.patch_size) ** 2, stages)
            except ValueError as err:
                raise ValueError(f"prune.keep_rates: {err}") from None
        return self

    @model_validator(mode="after")
    def _finetune_init(self) -> Params:
        init, weights = self.finetune.init, self.models.student.pretrained_file
        _weights_for_init("finetune.init", init, "student", weights, "use init: scratch")
        if init != "pretrained_file" and weights:
            raise ValueError(
                f"models.student.pretrained_file is set but finetune.init is {init!r}; "
                "set finetune.init: pretrained_file or clear the file"
            )
        return self

    @model_validator(mode="after")
    def _teacher_init(self) -> Params:
        init, weights = self.teacher.init, self.models.teacher.pretrained_file
        _weights_for_init("teacher.init", init, "teacher", weights, "use another init")
        if init == "scratch" and weights:
            raise ValueError(
                "models.teacher.pretrained_file is set but teacher.init is 'scratch'; "
                "set teacher.init: pretrained_file or clear the file"
            )
        if init == "scratch" and not self.teacher.epochs:
            raise ValueError(
                "teacher.epochs is 0 but teacher.init is 'scratch': an untrained teacher teaches noise; "
                "start it from pretrained_file or a model folder, or train it (epochs >= 1)"
            )
        return self


def _missing_keys_message(
    keys: list[str], source: str = PARAMS_FILE, fix: str = REGENERATE, profile: str = "cpu"
) -> str:
    """`<source>: <key>[, <key>...] is/are missing; <fix>`, `fix` naming them `{it}`, the profile `{profile}`."""
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    one = len(keys) == 1
    what = fix.format(it="it" if one else "them", profile=profile)
    return f"{source}: {shown} {'is' if one else 'are'} missing; {what}"


def format_validation_error(
    err: ValidationError, source: str = PARAMS_FILE, fix: str = REGENERATE, profile: str = "cpu"
) -> str:
    """One line: `<source>: <key.path>: <what is wrong and what is allowed>` for each problem, and the
    missing keys together (see `_missing_keys_message`)."""
    lines, missing = [], []
    for item in err.errors():
        loc = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            parent = _section_at(item["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see params.yaml"
            lines.append(f"{source}: {loc}: unknown key; allowed keys here: {allowed}")
            continue
        if item["type"] == "missing":
            missing.append(loc)
            continue
        msg = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        said = "got " in msg  # NOTE: our own validators name the value already
        shown = "" if said or isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}" if loc else f"{source}: {msg}")
    if missing:
        lines.append(_missing_keys_message(missing, source, fix, profile))
    return "; ".join(lines)


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _leaf_paths(tree: Any, prefix: str = "") -> set[str]:
    if isinstance(tree, dict):
        paths: set[str] = set()
        for key, value in tree.items():
            paths |= _leaf_paths(value, f"{prefix}{key}.")
        return paths
    return {prefix.rstrip(".")}


def validate_params(raw: Any, source: str = PARAMS_FILE, complete: bool = True, fix: str = REGENERATE) -> Params:
    """Validate a parsed params tree; with `complete`, the keys that have a default must be present too.

    A missing key is named with `fix` (see `_missing_keys_message`): by default, regenerate `raw`'s
    own profile (cpu if it names none) or add the key.
    """
    if not isinstance(raw, dict):
        raise MaskpruneError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    profile = raw.get("profile") if raw.get("profile") in PROFILES else "cpu"
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        problems = format_validation_error(err, source, fix, profile)
        if Path(source).name == PARAMS_FILE and any(item["type"] != "missing" for item in err.errors()):
            problems += f"; {GENERATED.format(profile=profile)}"
        raise MaskpruneError(problems) from None
    if complete:
        missing = sorted(_leaf_paths(params.model_dump()) - _leaf_paths(raw))
        if missing:
            raise MaskpruneError(_missing_keys_message(missing, source, fix, profile))
    return params


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskpruneError(
            f"{path} not found: run from the repository root or create it with `python -m maskprune.profile cpu`"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(err, "problem", None)
        raise MaskpruneError(
            f"{path}: not valid YAML{where}{f' ({reason})' if reason else ''}: fix the syntax"
        ) from None


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding dvc.yaml, else $DVC_ROOT.

    NOTE: the working directory comes first: `dvc exp run --temp` and queued experiments run
    stages in a temporary copy of the repository while $DVC_ROOT still names the original.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return Path(os.environ["DVC_ROOT"]).resolve() if os.environ.get("DVC_ROOT") else here


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Load and validate params.yaml (default: the one at the repository root)."""
    params_path = Path(path) if path else find_repo_root() / PARAMS_FILE
    return validate_params(read_yaml(params_path), source=str(params_path.name))
