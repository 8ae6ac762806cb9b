"""The experiment's YAML config, validated with pydantic (unknown keys and wrong types refused).

Every problem is reported as ONE ``ValueError`` line naming the file, line and key, e.g.
``configs/x.yaml:3: train.epochs: Input should be a valid integer`` (see
:mod:`mladv.configbase`). The attack options under ``mladv:`` / ``pgd:`` are checked by name and
value when the file is read (``steps: two`` is refused then, not after the base model trained).
Command-line flags are merged into the YAML before validation, so they are checked the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator

from ..attacks.registry import check_attack_options
from ..configbase import Strict, dump_yaml, load_yaml_config, validate
from ..defaults import IMAGE_SIZE_MAX, IMAGE_SIZE_MIN
from ..models import check_arch, check_freeze, check_image_size
from ..units import check_eps_255
from ..utils import parse_device
from .arm_table import ARMS, check_arm

RUN_CONTROLLED = ("model", "eps", "seed")  # set by the experiment, not by the options dicts


class TrainConfig(Strict):
    """The schedule every arm is trained with (AdamW, one-cycle; see ``train_classifier``)."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(default=1e-4, ge=0)
    # autocast and memory format of training (``train_classifier``): "auto" is bf16 +
    # channels_last on CUDA, fp32 elsewhere; bf16 + channels_last on a CPU with AMX / AVX512-BF16
    # trains the ResNet50 family about 2x faster (benchmarks/precision.py, benchmarks/README.md)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"


class SplitConfig(Strict):
    """Patient-aware stratified split (ignored when ``test_data`` is given). Fixed across seeds
    (SPEC section 2.1), so every arm and seed is scored on the same test images."""

    test_size: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0


class AugmentConfig(Strict):
    """How ``x'_train`` is crafted: shard and batch size (the batch size changes MLAdv's
    same-class style partners, so it is part of what is reproduced)."""

    shard_size: PositiveInt = 256
    batch_size: PositiveInt = 32


class RobustnessConfig(Strict):
    """Robustness of each arm's model: attacks crafted on that model, and Gaussian noise."""

    attacks: list[str] = Field(default_factory=lambda: ["mladv", "pgd"])
    noise_sigmas: list[float] = Field(default_factory=lambda: [0.02, 0.05])
    max_images: PositiveInt | None = None  # attack a fixed stratified subset of the test set
    batch_size: PositiveInt = 32
    # own-model PGD accuracy at each eps (1/255 units; the pgd: options, e.g. steps), acc_pgd_E
    pgd_eps: list[float] = Field(default_factory=list)
    # torchattacks' AutoAttack (standard) on the first N of the stratified subset (0: off)
    autoattack_images: int = Field(default=0, ge=0)
    autoattack_eps: float = Field(default=2.0, gt=0, le=255)  # 1/255 units
    autoattack_square_queries: PositiveInt = 5000  # 5000 is the standard version
    ece_bins: PositiveInt = 15
    # accuracy per chain transform alone at 3 severities (acquisition shift) and under the
    # adversarial chain (at severity 1, the chain: options): off by default
    acquisition_shift: bool = False

    @field_validator("pgd_eps")
    @classmethod
    def _pgd_eps(cls, value: list[float]) -> list[float]:
        return [check_eps_255(e, "pgd_eps") for e in value]

    @field_validator("autoattack_eps")
    @classmethod
    def _autoattack_eps(cls, value: float) -> float:
        return check_eps_255(value, "autoattack_eps")

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ("mladv", "pgd")]
        if bad:
            raise ValueError(f"unknown robustness attack(s) {bad}; valid: mladv, pgd")
        return value

    @field_validator("noise_sigmas")
    @classmethod
    def _sigmas(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError(f"noise sigmas must be > 0, got {value}")
        return value


def _all_rows() -> list[float | None]:
    return [None]


class OnlineGrid(Strict):
    """The grid searched for the online arms: ``eps`` in 1/255 units, attack ``steps``,
    ``fraction`` of each batch replaced (``null``: train on the batch and all its copies)."""

    eps: list[float] = Field(default_factory=lambda: [1.0, 2.0], min_length=1)
    steps: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    fraction: list[float | None] = Field(default_factory=lambda: _all_rows(), min_length=1)

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: list[float]) -> list[float]:
        return [check_eps_255(e, "online eps", example=1) for e in value]

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, value: list[float | None]) -> list[float | None]:
        if any(f is not None and not 0 < f <= 1 for f in value):
            raise ValueError(f"fractions must be null or in (0, 1], got {value}")
        return value

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, in the order the tie-break of the rule uses: eps, then steps,
        then fraction, each as listed."""
        return [{"eps": e, "steps": s, "fraction": f}
                for e in self.eps for s in self.steps for f in self.fraction]


SELECTION_RULES = {
    "max-val-accuracy": "the grid point with the highest validation accuracy; ties (within "
                        "1e-9) go to the point listed first (eps, then steps, then fraction in "
                        "the order the grid lists them: the cheaper, smaller budget first)",
    "max-val-macro-auroc": "the grid point with the highest validation macro AUROC (the mean of "
                           "the per-finding AUROCs defined on the validation split: a multilabel "
                           "data set); ties (within 1e-9) go to the point listed first, as in "
                           "max-val-accuracy",
}
# the validation score each rule maximises (a key of a scored grid point)
RULE_SCORES = {"max-val-accuracy": "val_accuracy", "max-val-macro-auroc": "val_macro_auroc"}
# the rule a data set's task needs (multiclass: argmax accuracy; multilabel: macro AUROC)
TASK_RULES = {"multiclass": "max-val-accuracy", "multilabel": "max-val-macro-auroc"}


class SelectionConfig(Strict):
    """How the online grid is decided: on a validation split carved (patient-aware,
    stratified) from the training set, once, with one seed; never on the test split."""

    val_size: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    rule: str = "max-val-accuracy"

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if value not in SELECTION_RULES:
            raise ValueError(f"unknown selection rule {value!r}; valid: "
                             f"{', '.join(SELECTION_RULES)}")
        return value


class OnlineConfig(Strict):
    """The online / AdvProp arms: the grid of their eps / steps / fraction and how the grid is
    decided (``selection``). One choice per arm, reused for every seed."""

    grid: OnlineGrid = Field(default_factory=lambda: OnlineGrid())
    selection: SelectionConfig = Field(default_factory=lambda: SelectionConfig())
    # matched controls: ``{control: source}``: the control arm is not searched on the grid, it
    # trains at the very grid point the selection chose for ``source`` (issue 22 item 7:
    # chain-random at the severity chain-online chose, not at its own choice)
    matched: dict[str, str] = Field(default_factory=dict)


class ArmOptions(Strict):
    """Settings of the transform arms."""

    rotation_degrees: float = Field(default=15.0, ge=0, le=180)
    central_symmetry_p: float = Field(default=0.5, ge=0, le=1)
    mixup_alpha: PositiveFloat = 0.2
    cutmix_alpha: PositiveFloat = 1.0
    trivialaugment_bins: int = Field(default=31, ge=2)


def _check_options(value: dict[str, Any], name: str, what: str) -> dict[str, Any]:
    """The ``pgd:`` / ``mladv:`` / ``chain:`` options go through the registry's one checker
    (:func:`~mladv.attacks.registry.check_attack_options`: names, types and values, on a throwaway
    model), so exactly the options ``mladv attack --option`` accepts are accepted, with its
    messages. The experiment's own refusal comes first: ``model`` / ``eps`` / ``seed`` are set by
    the run (:data:`RUN_CONTROLLED`)."""
    controlled = [k for k in value if k in RUN_CONTROLLED]
    if controlled:
        raise ValueError(f"{controlled[0]!r} is set by the experiment (top-level eps, seeds), "
                         f"not in the {what} options")
    check_attack_options(name, value)
    return value


class ExperimentConfig(Strict):
    """Everything an experiment run depends on. ``eps`` is in 1/255 units, like ``--eps``."""

    name: str = "experiment"
    data: str | None = None
    test_data: str | None = None
    image_size: int = Field(default=64, ge=IMAGE_SIZE_MIN, le=IMAGE_SIZE_MAX)
    arch: str = "resnet18"
    weights: str | None = None  # pretrained backbone: torchvision weights name or state-dict file
    freeze_backbone: bool = False
    seeds: PositiveInt | list[int] = 3
    eps: float = Field(default=8.0, gt=0, le=255)
    arms: list[str] = Field(default_factory=lambda: list(ARMS))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    split: SplitConfig = Field(default_factory=lambda: SplitConfig())
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig())
    robustness: RobustnessConfig = Field(default_factory=lambda: RobustnessConfig())
    arm_options: ArmOptions = Field(default_factory=lambda: ArmOptions())
    online: OnlineConfig = Field(default_factory=lambda: OnlineConfig())
    pgd: dict[str, Any] = Field(default_factory=dict)
    mladv: dict[str, Any] = Field(default_factory=dict)
    chain: dict[str, Any] = Field(default_factory=dict)  # the chain arms' bounds (Chain options)
    device: str = "auto"
    progress: bool = True
    # DICOM files: "voi" (modality + VOI LUT, polarity) or "raw" (see mladv.data.dicom)
    dicom_mode: Literal["voi", "raw"] = "voi"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str, info: ValidationInfo) -> str:
        check_arch(value)
        if isinstance(info.data.get("image_size"), int):  # per-architecture minimum size
            check_image_size(info.data["image_size"], value)
        return value

    @field_validator("freeze_backbone")
    @classmethod
    def _freeze_needs_weights(cls, value: bool, info: ValidationInfo) -> bool:
        check_freeze(info.data.get("weights"), value)
        return value

    @field_validator("eps")
    @classmethod
    def _eps_units(cls, value: float) -> float:
        return check_eps_255(value, "eps")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return parse_device(value, "")

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one arm is needed")
        for name in value:
            check_arm(name)
        if len(set(value)) != len(value):
            twice = sorted({a for a in value if value.count(a) > 1})
            raise ValueError(f"arms listed twice: {twice}")
        return value

    @field_validator("online")
    @classmethod
    def _matched(cls, value: OnlineConfig, info: ValidationInfo) -> OnlineConfig:
        arms = info.data.get("arms")
        if isinstance(arms, list):
            check_matched(value.matched, arms)
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError(f"seeds must be a count or a non-empty list of distinct ints, "
                             f"got {value}")
        return value

    @field_validator("mladv")
    @classmethod
    def _mladv_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_options(value, "mladv", "MLAdv")

    @field_validator("pgd")
    @classmethod
    def _pgd_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_options(value, "pgd", "pgd")

    @field_validator("chain")
    @classmethod
    def _chain_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_options(value, "chain", "chain")

    def seed_list(self) -> list[int]:
        """``seeds: 3`` -> ``[0, 1, 2]``; a list is used as given."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def eps_unit(self) -> float:
        """eps in [0, 1] image units."""
        return self.eps / 255.0

    def resume_key(self) -> dict[str, Any]:
        """What finished outputs depend on: a rerun may add seeds or arms, or change the device,
        the name, the progress bars or the data paths (the data's content is checked by hash
        instead), but nothing else."""
        key = self.model_dump(mode="json", exclude={"seeds", "arms", "device", "progress", "name",
                                                    "data", "test_data"})
        if self.weights is None:  # runs from before pretrained backbones keep their key
            del key["weights"], key["freeze_backbone"]
        if not self.chain:  # runs from before the chain arms keep their key
            del key["chain"]
        if not self.online.matched:  # runs from before matched controls keep their key
            del key["online"]["matched"]
        if self.dicom_mode == "voi":  # runs from before --dicom-mode keep their key
            del key["dicom_mode"]
        if not self.robustness.acquisition_shift:
            del key["robustness"]["acquisition_shift"]
        for name in ("precision", "channels_last"):  # runs from before these keep their key
            if key["train"][name] == "auto":
                del key["train"][name]
        return key


def check_matched(matched: dict[str, str], arms: list[str]) -> None:
    """``online.matched`` (``{control: source}``): both arms run, both online arms of the same
    attack (so the grid point means the same budget), a control is no source and no arm is
    matched to itself; one ``ValueError`` line naming the pair otherwise."""
    for control, source in matched.items():
        pair = f"online.matched {control}: {source}"
        for name in (control, source):
            spec = check_arm(name)
            if name not in arms:
                raise ValueError(f"{pair}: arm {name!r} is not in arms {arms}")
            if not spec.online:
                raise ValueError(f"{pair}: {name!r} is not an online arm (no grid point)")
        if control == source or source in matched:
            raise ValueError(f"{pair}: the source must be a searched arm, not itself a control")
        if ARMS[control].attack != ARMS[source].attack:
            raise ValueError(f"{pair}: different attacks ({ARMS[control].attack} vs "
                             f"{ARMS[source].attack}), so one grid point is not one budget")


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a settings mapping; ``ValueError`` with one line naming the key otherwise."""
    return validate(ExperimentConfig, raw, source)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read ``path`` and apply ``overrides`` (flags; ``None`` values are ignored), then validate;
    one ``ValueError`` line naming the file, line and key otherwise."""
    return load_yaml_config(ExperimentConfig, path, overrides)


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (what ``config.yaml`` in the run folder holds)."""
    return dump_yaml(config)
