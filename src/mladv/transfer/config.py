"""The transfer experiment's YAML config: models, attacks, BM3D and CAM settings.

Read with :func:`load_config` (strict: unknown keys, wrong types and bad attack options are one
``ValueError`` line naming the file, line and key, before anything is trained).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from ..attacks import ATTACKS
from ..attacks.registry import check_attack_options
from ..configbase import Strict, dump_yaml, load_yaml_config
from ..defaults import IMAGE_SIZE_MAX, IMAGE_SIZE_MIN
from ..models import check_arch, check_freeze, check_image_size
from ..units import check_eps_255
from ..utils import parse_device

DISPLAY = {"fgsm": "FGSM", "pgd": "PGD", "mifgsm": "MI-FGSM", "pifgsm": "PI-FGSM",
           "gama": "GAMA", "rays": "RayS", "mladv": "MLAdv"}


class ModelSpec(Strict):
    """A model of the experiment: trained here (``epochs``, ``lr``, ``batch_size``) or loaded
    from ``checkpoint`` (a ``model.pt`` of ``mladv train``).

    A model trained here starts from a fresh initialisation, or from a pretrained backbone:
    ``weights`` is a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``; from torch hub's
    cache) or a local state-dict file, and ``freeze_backbone`` trains the head only (see
    :func:`mladv.models.build_model`). Both are checked before anything is trained."""

    arch: str
    name: str | None = None
    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    checkpoint: str | None = None
    weights: str | None = None
    freeze_backbone: bool = False
    # autocast of training (``train_classifier``), as the experiment's ``train.precision``:
    # "auto" is bf16 on CUDA, fp32 elsewhere; "bf16" on a CPU with AMX / AVX512-BF16 trains the
    # ResNet50 family ~1.4x faster at 96 px (benchmarks/README.md). Attacks and scoring stay fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        return check_arch(value)

    @model_validator(mode="after")
    def _weights_fit(self) -> ModelSpec:
        if self.checkpoint and (self.weights or self.freeze_backbone):
            raise ValueError("weights / freeze_backbone are for a model trained here; a "
                             "checkpoint already holds its weights")
        check_freeze(self.weights or None, self.freeze_backbone)
        return self

    @property
    def label(self) -> str:
        return self.name or self.arch


class AttackSpec(Strict):
    """An attack from the registry; ``options`` go to its constructor (eps and seed are the
    run's). ``label`` names its row (default: the usual name, e.g. ``MI-FGSM``)."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_attack(cls, value: str) -> str:
        if value.lower() not in ATTACKS:
            raise ValueError(f"unknown attack {value!r}; valid: {', '.join(sorted(ATTACKS))}")
        return value.lower()

    @field_validator("options")
    @classmethod
    def _run_controlled(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("eps", "seed", "model"):
            if key in value:
                raise ValueError(f"{key!r} is set by the run (top-level eps / seed), "
                                 f"not per attack")
        return value

    @model_validator(mode="after")
    def _valid_options(self) -> AttackSpec:
        """Option names and values are checked when the config is read (a RayS budget of 0, an
        unknown keyword, ``steps: two``), not after hours of training."""
        check_attack_options(self.name, self.options)
        return self

    @property
    def title(self) -> str:
        return self.label or DISPLAY.get(self.name, self.name)


class BM3DSpec(Strict):
    """BM3D: at most ``max_images`` test images (a seeded sample beyond), noise level ``sigma``
    in 1/255 units (default: the run's eps), ``workers`` processes (default: all cores)."""

    max_images: int = Field(default=60, ge=1)
    sigma: float | None = Field(default=None, gt=0, le=255)
    profile: str = "np"
    workers: int | None = Field(default=None, ge=1)


class CAMSpec(Strict):
    """Grad-CAM of the source model: the ``top`` share of pixels is the attended region;
    ``layer`` a module name (default: the last spatial stage, see ``mladv.cam``)."""

    top: float = Field(default=0.2, gt=0, le=1)
    layer: str | None = None


class SplitSpec(Strict):
    """The patient-aware stratified split (ignored when ``test_data`` is given), spelled as the
    experiment's ``split:``. ``seed`` defaults to the run's ``seed`` (a config without it
    splits as before the section existed)."""

    test_size: float = Field(default=0.15, gt=0, lt=1)
    seed: int | None = None


def _default_attacks() -> list[AttackSpec]:
    names = ("fgsm", "pgd", "mifgsm", "pifgsm", "gama", "rays", "mladv")
    return [AttackSpec(name=n) for n in names]


class TransferConfig(Strict):
    """Everything a transfer run depends on. ``eps`` is in 1/255 units, like ``--eps``.

    Key names follow the experiment's config: ``split: {test_size, seed}`` and ``max_images``
    (attack a seeded sample of at most that many test images; the experiment's
    ``robustness.max_images``) and ``seeds`` (a count, ``3`` -> ``[0, 1, 2]``, or a list of
    distinct ints, as the experiment's). ``seed`` drives the data sample, the split (unless
    ``split.seed``), the test sample, the source's training (``seed``) and the attacks: Table 1
    attacks one source model once. Without ``seeds`` each target ``i`` (1-based) is trained once
    from ``seed + i``; with ``seeds`` it is trained once per target seed ``s`` from
    ``seed + i + 1000 * s`` (:meth:`target_seed`; so ``seeds: [0]`` trains what a run without
    ``seeds`` trains), and the same adversarial images are scored on every seed's targets, which
    gives the black-box rates a spread over target seeds. The old top-level ``test_size`` and
    ``max_test_images`` fail with one line naming the new key (``RENAMED``)."""

    RENAMED: ClassVar[dict[str, str]] = {"test_size": "split.test_size",
                                         "max_test_images": "max_images"}

    name: str = "transfer"
    data: str = "phantoms"
    test_data: str | None = None
    image_size: int = Field(default=128, ge=IMAGE_SIZE_MIN, le=IMAGE_SIZE_MAX)
    split: SplitSpec = Field(default_factory=lambda: SplitSpec())
    max_images: int | None = Field(default=None, ge=1)
    seed: int = 0
    seeds: PositiveInt | list[int] | None = None
    eps: float = Field(default=8.0, gt=0, le=255)
    source: ModelSpec
    targets: list[ModelSpec] = Field(min_length=1)
    attacks: list[AttackSpec] = Field(default_factory=_default_attacks, min_length=1)
    batch_size: int = Field(default=32, ge=1)
    bm3d: BM3DSpec = Field(default_factory=lambda: BM3DSpec())
    cam: CAMSpec = Field(default_factory=lambda: CAMSpec())
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    progress: bool = True
    # DICOM files: "voi" (modality + VOI LUT, polarity) or "raw" (see mladv.data.dicom)
    dicom_mode: Literal["voi", "raw"] = "voi"

    @field_validator("eps")
    @classmethod
    def _eps_units(cls, value: float) -> float:
        return check_eps_255(value, "eps")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return parse_device(value, "")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError(f"seeds must be a count or a non-empty list of distinct ints, "
                             f"got {value}")
        return value

    @field_validator("attacks")
    @classmethod
    def _unique_labels(cls, value: list[AttackSpec]) -> list[AttackSpec]:
        titles = [a.title for a in value]
        twice = sorted({t for t in titles if titles.count(t) > 1})
        if twice:
            raise ValueError(f"attack rows named twice: {twice}; give them distinct labels")
        return value

    @field_validator("source", "targets")
    @classmethod
    def _size_fits_arch(cls, value: ModelSpec | list[ModelSpec], info: ValidationInfo
                        ) -> ModelSpec | list[ModelSpec]:
        """``image_size`` (validated before, in ``IMAGE_SIZE_MIN..IMAGE_SIZE_MAX``) must also
        be large enough for each architecture's downsampling (the error names the model)."""
        size = info.data.get("image_size")
        if size is not None:
            for spec in value if isinstance(value, list) else [value]:
                check_image_size(size, spec.arch)
        return value

    @model_validator(mode="after")
    def _split_seed(self) -> TransferConfig:
        """``split.seed`` left out is the run's ``seed`` (written so in ``config.yaml``)."""
        if self.split.seed is None:
            self.split = self.split.model_copy(update={"seed": self.seed})
        return self

    @model_validator(mode="after")
    def _seeds_retrain(self) -> TransferConfig:
        """Target seeds retrain the targets: a target loaded from a checkpoint has one set of
        weights, so ``seeds`` with one is refused, naming it."""
        if self.seeds is not None:
            loaded = [t.label for t in self.targets if t.checkpoint]
            if loaded:
                raise ValueError(f"seeds: target {loaded[0]} is loaded from a checkpoint; "
                                 f"target seeds retrain every target (drop seeds or the "
                                 f"checkpoint)")
        return self

    def split_seed(self) -> int:
        """The split's seed: ``split.seed``, else the run's ``seed``."""
        return self.seed if self.split.seed is None else self.split.seed

    def model_specs(self) -> list[tuple[str, ModelSpec]]:
        """``(key, spec)`` for the source and every target, keys unique (``source``, ``t1``...)."""
        return [("source", self.source)] + [(f"t{i + 1}", t) for i, t in enumerate(self.targets)]

    def seed_list(self) -> list[int] | None:
        """The target seeds: ``seeds: 3`` -> ``[0, 1, 2]``, a list as given; ``None`` without
        ``seeds`` (one model per target, trained as before the key existed)."""
        if self.seeds is None:
            return None
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def target_seed(self, i: int, s: int | None) -> int:
        """The training seed of target ``i`` (1-based position among the targets) for target
        seed ``s``: ``seed + i`` without seeds (``s`` None), else ``seed + i + 1000 * s``."""
        return self.seed + i + (0 if s is None else 1000 * s)

    def trained_models(self) -> list[tuple[str, ModelSpec, int, int | None]]:
        """``(key, spec, training seed, target seed)`` of every model to obtain: the source
        (``source``, trained from ``seed``), then each target once (``t1`` ...) or, with
        ``seeds``, once per target seed (``t1-seed0``, ``t1-seed1`` ... target by target)."""
        out: list[tuple[str, ModelSpec, int, int | None]] = [("source", self.source, self.seed,
                                                              None)]
        seeds = self.seed_list()
        for i, spec in enumerate(self.targets, start=1):
            if seeds is None:
                out.append((f"t{i}", spec, self.target_seed(i, None), None))
            else:
                out += [(f"t{i}-seed{s}", spec, self.target_seed(i, s), s) for s in seeds]
        return out

    def eps_unit(self) -> float:
        return self.eps / 255.0


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TransferConfig:
    """Read the YAML at ``path`` (``yaml.safe_load``), apply ``overrides`` (flags; ``None``
    values ignored) and validate; ``ValueError`` with one line naming the file and key."""
    return load_yaml_config(TransferConfig, path, overrides)


def dump_config(cfg: TransferConfig) -> str:
    """The resolved config as YAML (``config.yaml`` of the run folder)."""
    return dump_yaml(cfg)
