"""Practitioners' models as adapters: one-channel images in [0, 1] in, logits out.

A :class:`ModelAdapter` wraps a model someone already has (a torchxrayvision classifier, a
TorchScript archive, a Python factory) so that every mladv attack, trainer and card can use it
like its own classifiers. It is a ``torch.nn.Module`` whose ``forward`` takes ``N x 1 x H x W``
images in ``[0, 1]`` and returns ``N x K`` logits, and it carries what mladv needs to know:

- ``task``: ``"multiclass"`` or ``"multilabel"`` (:mod:`mladv.tasks`);
- ``classes``: the class / finding names (``K`` of them), or ``None`` when not given;
- ``thresholds``: per-finding decision probabilities (multilabel), or ``None`` (0.5);
- ``input_range``: ``(lo, hi)`` of the wrapped model's own pixel units;
- ``channels``: 1, or 3 (the grey image repeated inside the adapter);
- ``eps_scale``: ``hi - lo``, the factor from an eps in [0, 1] units to the model's units
  (8/255 of [0, 1] is ``8/255 * 2048 = 64.25`` in torchxrayvision's ``[-1024, 1024]``).

Build one with :func:`load_model_spec` (``xrv:NAME``, ``torchscript:FILE``,
``python:pkg.module:factory``: the CLI's ``--model``), or with :func:`xrv_model`,
:func:`torchscript_model`, :func:`python_model`. Every wrong spec, missing file or wrong
combination of options is one ``ValueError`` / ``FileNotFoundError`` line before any compute.

This module will join the ``models/`` package (DESIGN.md, third pass) when ``models.py`` moves
there; it imports only :mod:`mladv.tasks` and torch. torchxrayvision is an optional extra
(``pip install 'mladv[xrv]'``), imported inside :func:`xrv_model` only, so ``import mladv`` never
needs it.
"""
from __future__ import annotations

import collections
import functools
import importlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tasks import Task, check_task

XRV_RANGE = (-1024.0, 1024.0)
SPEC_KINDS = ("xrv", "torchscript", "python")
SPEC_FORMS = "xrv:NAME, torchscript:FILE or python:pkg.module:factory"

Floats = float | Sequence[float]


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's are often pages long)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return exc.__class__.__name__


def _check_range(input_range: Sequence[float]) -> tuple[float, float]:
    values = tuple(float(v) for v in input_range)
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] >= values[1]:
        raise ValueError(f"input_range (--input-range LO,HI) must be two finite numbers with "
                         f"LO < HI, got {tuple(input_range)}")
    return values[0], values[1]


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels (--channels) must be 1 or 3, got {channels}")
    return channels


def _per_channel(name: str, value: Floats | None, channels: int) -> Tensor | None:
    """``value`` as a ``1 x C x 1 x 1`` float32 tensor (a number is used for every channel)."""
    if value is None:
        return None
    values = [float(value)] * channels if isinstance(value, (int, float)) else \
        [float(v) for v in value]
    if len(values) != channels:
        raise ValueError(f"{name} needs one value per channel ({channels}), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}")
    if name == "std" and any(v <= 0 for v in values):
        raise ValueError(f"std must be positive, got {values}")
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        raise ValueError(f"classes must be a list of names, got the string {classes!r}")
    names = tuple(str(c) for c in classes)
    if not names or any(not n.strip() for n in names):
        raise ValueError(f"classes must be non-empty names, got {list(names)}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"classes must be distinct, got {dup[0]!r} twice")
    return names


def _check_thresholds(thresholds: Sequence[float] | None, task: Task,
                      classes: tuple[str, ...] | None) -> tuple[float, ...] | None:
    if thresholds is None:
        return None
    if task != "multilabel":
        raise ValueError("thresholds apply to a multilabel task only (multiclass decides by "
                         "argmax)")
    values = tuple(float(t) for t in thresholds)
    bad = [t for t in values if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"thresholds must be probabilities in (0, 1), got {bad[0]:g}")
    if classes is not None and len(values) != len(classes):
        raise ValueError(f"thresholds: {len(values)} values for {len(classes)} classes")
    return values


class ModelAdapter(nn.Module):
    """A model in its own units seen as an mladv classifier: ``[0, 1]`` images in, logits out.

    ``forward``, for images ``x`` (``N x 1 x H x W`` in [0, 1]), with ``(lo, hi)`` =
    ``input_range``, ``C`` = ``channels`` and ``S`` = ``input_size``::

        x' = resize(x, S x S)        only when S is set and H x W != S x S (bilinear with
                                     antialias, as torchxrayvision's own ``fix_resolution``;
                                     non-square images are refused: centre-crop them first)
        u  = lo + (hi - lo) x'       the model's own pixel units
        u  = u repeated to C channels
        u  = (u - mean_c) / std_c    when mean / std are given
        z  = model(u)[:, columns]    N x K logits (columns: the outputs kept, or all)

    Resizing before the affine map equals resizing after it (bilinear weights sum to 1). The
    affine map has a gradient, so attacks see the model's whole input path; an eps in [0, 1]
    units is ``eps * eps_scale`` in the model's units (``eps_scale = hi - lo``).

    The wrapped model is put in eval mode; ``train()`` / ``eval()`` reach it as usual. Mean, std
    and the kept columns are non-persistent buffers, so ``state_dict()`` holds the wrapped
    model's tensors only (under ``model.``).

    Shape: input ``N x 1 x H x W``; output ``N x K`` (``K = len(classes)`` when given).
    """

    mean: Tensor | None
    std: Tensor | None
    columns: Tensor | None

    def __init__(self, model: nn.Module, *, task: str, classes: Sequence[str] | None = None,
                 thresholds: Sequence[float] | None = None,
                 input_range: Sequence[float] = (0.0, 1.0), channels: int = 1,
                 mean: Floats | None = None, std: Floats | None = None,
                 input_size: int | None = None, columns: Sequence[int] | None = None,
                 source: str = "") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.task: Task = check_task(task)
        self.classes = _check_classes(classes)
        self.thresholds = _check_thresholds(thresholds, self.task, self.classes)
        self.input_range = _check_range(input_range)
        self.channels = _check_channels(channels)
        if input_size is not None and input_size < 1:
            raise ValueError(f"input_size must be a positive number of pixels, got {input_size}")
        self.input_size = input_size
        self.source = source or type(model).__name__
        self.register_buffer("mean", _per_channel("mean", mean, self.channels), persistent=False)
        self.register_buffer("std", _per_channel("std", std, self.channels), persistent=False)
        cols = None if columns is None else torch.tensor(list(columns), dtype=torch.long)
        if cols is not None and self.classes is not None and len(cols) != len(self.classes):
            raise ValueError(f"columns: {len(cols)} for {len(self.classes)} classes")
        self.register_buffer("columns", cols, persistent=False)
        self.model = model.eval()

    @property
    def eps_scale(self) -> float:
        """``hi - lo``: an eps of ``e`` in [0, 1] units is ``e * eps_scale`` in model units."""
        return self.input_range[1] - self.input_range[0]

    def model_units(self, eps: float) -> float:
        """``eps`` (in [0, 1] units) in the wrapped model's own pixel units."""
        return eps * self.eps_scale

    def metadata(self) -> dict[str, Any]:
        """What a card or a checkpoint records about the model: source, task, classes,
        thresholds, input range, channels, eps scale, input size."""
        return {"source": self.source, "task": self.task,
                "classes": None if self.classes is None else list(self.classes),
                "thresholds": None if self.thresholds is None else list(self.thresholds),
                "input_range": list(self.input_range), "channels": self.channels,
                "eps_scale": self.eps_scale, "input_size": self.input_size}

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.source}: images must be N x 1 x H x W in [0, 1] (grey), "
                             f"got shape {tuple(x.shape)}")
        size = self.input_size
        if size is not None and (x.shape[2] != size or x.shape[3] != size):
            if x.shape[2] != x.shape[3]:
                raise ValueError(f"{self.source}: resizing to {size} x {size} needs square "
                                 f"images, got {x.shape[2]} x {x.shape[3]} (centre-crop first)")
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        lo, hi = self.input_range
        u = x * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else x
        if self.channels != 1:
            u = u.expand(-1, self.channels, -1, -1)
        if self.mean is not None:
            u = u - self.mean.to(u.dtype)
        if self.std is not None:
            u = u / self.std.to(u.dtype)
        return self._check_output(self.model(u))

    def _check_output(self, out: object) -> Tensor:
        if not isinstance(out, Tensor) or out.dim() != 2:
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{self.source} must return N x K logits (a Tensor), got {got}")
        if self.columns is not None:
            if out.shape[1] <= int(self.columns.max()):
                raise ValueError(f"{self.source} returns {out.shape[1]} outputs, fewer than the "
                                 f"{int(self.columns.max()) + 1} its findings need")
            out = out.index_select(1, self.columns)
        if self.classes is not None and out.shape[1] != len(self.classes):
            raise ValueError(f"{self.source} returns {out.shape[1]} logits per image but "
                             f"{len(self.classes)} classes were given ({', '.join(self.classes)})")
        if self.thresholds is not None and out.shape[1] != len(self.thresholds):
            raise ValueError(f"{self.source} returns {out.shape[1]} logits per image but "
                             f"{len(self.thresholds)} thresholds were given")
        return out

    @torch.no_grad()
    def probe(self, image_size: int) -> int:
        """Run one ``1 x 1 x S x S`` zero image through the model (eval mode, no gradient; mode
        restored) and return its number of logits ``K``: the output-width checks of
        ``forward`` (``K == len(classes)``) as one line before any real compute."""
        was_training = self.training
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.eval()
        try:
            return int(self(torch.zeros(1, 1, image_size, image_size, device=device)).shape[1])
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign model's failure, said in one line
            raise ValueError(f"{self.source} failed on a 1 x {self.channels} x {image_size} x "
                             f"{image_size} probe: {exc.__class__.__name__}: {_one_line(exc)}"
                             ) from None
        finally:
            self.train(was_training)


def _finding_key(name: str) -> str:
    """A finding name compared case-blind, with ``_`` / ``-`` / runs of spaces as one space
    (NIH's ``Pleural_Thickening`` is CheXpert-style ``Pleural Thickening``)."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold()


def align_targets(targets: Tensor, findings: Sequence[str], classes: Sequence[str]) -> Tensor:
    """A data set's multilabel targets in a model's class order.

    ``targets`` is ``N x F`` (0, 1, NaN = unknown) over the data's ``findings``; the result is
    ``N x K`` over the model's ``classes``: column ``k`` is the data's column for the finding
    named ``classes[k]`` (names compared by :func:`_finding_key`), and NaN (unknown, so masked
    out of every loss and metric by :func:`mladv.tasks.masked_bce` and friends) where the data
    does not label that finding. Data findings the model does not predict are left out. One
    ``ValueError`` line when no finding is shared or names repeat.

    Shape: ``targets`` ``N x F`` -> ``N x K`` (float, on ``targets``' device).
    """
    if targets.dim() != 2 or targets.shape[1] != len(findings):
        raise ValueError(f"targets must have shape N x {len(findings)} (one column per finding "
                         f"in findings), got {tuple(targets.shape)}")
    data = {_finding_key(f): j for j, f in enumerate(findings)}
    if len(data) != len(findings):
        raise ValueError(f"findings repeat a name: {list(findings)}")
    cols = [data.get(_finding_key(c), -1) for c in classes]
    if all(j < 0 for j in cols):
        raise ValueError(f"no finding of the data {list(findings)} is among the model's classes "
                         f"{list(classes)}")
    out = torch.full((targets.shape[0], len(classes)), math.nan, dtype=targets.dtype
                     if targets.is_floating_point() else torch.float32, device=targets.device)
    for k, j in enumerate(cols):
        if j >= 0:
            out[:, k] = targets[:, j]
    return out


# --- state dicts ------------------------------------------------------------------------------

def _load_state_dict(path: Path, allowed: Sequence[Any] = ()) -> dict[str, Tensor]:
    """The tensors in ``path``, read with ``torch.load(weights_only=True)`` (no arbitrary code):
    a state dict, a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, or a whole pickled
    ``nn.Module`` whose classes are in ``allowed`` (torch's ``safe_globals``). A ``module.``
    prefix on every key (DataParallel) is dropped. One ``ValueError`` line otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same here
        raise ValueError(
            f"weights file {path}: not loadable with weights_only=True ({_one_line(exc)[:200]}); "
            "save a state dict (torch.save(model.state_dict(), FILE)), or if you trust the file "
            "convert it once: torch.save(torch.load(FILE, weights_only=False).state_dict(), NEW)"
        ) from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or \
            not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ValueError(f"weights file {path}: not a state dict (a dict of tensors)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_into(model: nn.Module, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """``model.load_state_dict(state, strict=True)``, its failure as one line naming ``path``."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        reason = lines[0] if lines else _one_line(exc)
        raise ValueError(f"weights file {path} does not fit {what}: {reason}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"weights file {path} does not fit {what}: missing "
                         f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")


# --- torchxrayvision ----------------------------------------------------------------------------

def _import_xrv() -> Any:
    try:
        return importlib.import_module("torchxrayvision")
    except ImportError:
        raise ValueError("xrv: models need torchxrayvision: pip install 'mladv[xrv]'") from None


def xrv_weights_path(name: str) -> tuple[Path, str]:
    """Where torchxrayvision keeps the weights of ``name`` (its cache folder, by default
    ``~/.torchxrayvision/models_data/``, and the file name of its release URL), and that URL."""
    xrv = _import_xrv()
    url = str(xrv.models.model_urls[name]["weights_url"])
    folder = Path(os.path.expanduser(str(xrv.utils.get_cache_dir())))
    return folder / os.path.basename(url), url


def _xrv_names(xrv: Any) -> list[str]:
    """torchxrayvision's DenseNet weight names (its ``model_urls`` keys, aliases included)."""
    urls = xrv.models.model_urls
    dense = {id(v) for k, v in urls.items() if k.startswith("densenet")}
    return [k for k, v in urls.items() if id(v) in dense]


def xrv_model(name: str = "densenet121-res224-all", *, weights_file: str | os.PathLike[str] |
              None = None, weights: Literal["pretrained"] | None = "pretrained") -> ModelAdapter:
    """A torchxrayvision DenseNet classifier as a multilabel :class:`ModelAdapter`.

    - **Input**: ``[0, 1]`` images become xrv's ``[-1024, 1024]`` range, ``u = 2048 x - 1024``
      (``eps_scale`` 2048), one channel; images of another size are resized to the model's
      224 x 224 (bilinear with antialias, as xrv's own ``fix_resolution`` does; non-square
      images are refused, as xrv refuses them).
    - **Output**: raw logits. xrv's ``forward`` maps its logits through ``sigmoid`` and
      ``op_norm`` (a piecewise-linear rescaling that puts each calibrated operating point
      ``op_threshs[k]`` at 0.5) whenever ``model.op_threshs`` is set; the adapter sets
      ``op_threshs = None`` (and ``apply_sigmoid = False``) so attacks ascend the logits, and
      keeps the operating points as ``thresholds`` (the decision ``sigmoid(z_k) >= t_k`` is the
      one xrv's ``op_norm(...) >= 0.5`` takes).
    - **Findings**: xrv's ``targets`` are the class names. Outputs whose target is an empty
      string (findings a model's training data did not label, e.g. 4 of the 18 for
      ``densenet121-res224-nih``) are **dropped** from the logits, ``classes`` and
      ``thresholds``, so no loss or metric can see them; ``columns`` keeps the indices of the
      outputs kept in xrv's 18-wide output.
    - **Weights**: ``weights=None`` -> random weights (tests; the names and operating points of
      ``name`` still apply). Else ``weights_file`` (a local file: a state dict, or xrv's own
      pickled DenseNet, both read with ``weights_only=True``), or, without one, the file xrv
      would have downloaded, read from xrv's cache folder. mladv never downloads: when that file
      is absent, one ``FileNotFoundError`` line names it, its folder and its URL.

    Only the DenseNet-121 weights are supported (xrv's ResNet-50 cannot be built without
    downloading its weights).
    """
    xrv = _import_xrv()
    names = _xrv_names(xrv)
    if name not in names:
        hint = (" (only torchxrayvision's DenseNet-121 classifiers are supported)"
                if name in xrv.models.model_urls else "")
        raise ValueError(f"unknown torchxrayvision model {name!r}{hint}; choose one of {names}")
    if weights not in ("pretrained", None):
        raise ValueError(f"weights must be 'pretrained' or None (random), got {weights!r}")
    if weights is None and weights_file is not None:
        raise ValueError("weights=None (random weights) and a weights file exclude each other")
    meta = xrv.models.model_urls[name]
    labels = [str(t) for t in meta["labels"]]
    source = f"xrv:{name}"
    path: Path | None = None
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
    elif weights == "pretrained":
        path, url = xrv_weights_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"torchxrayvision weights for {name} not found: put {path.name} in "
                f"{path.parent} (from {url}), or pass --weights-file FILE; mladv does not download")
    models = xrv.models
    allowed = [models.DenseNet, models._DenseBlock, models._DenseLayer, models._Transition,
               nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
               nn.Linear, collections.OrderedDict, set]
    state = None if path is None else _load_state_dict(path, allowed)  # read before building
    model = models.DenseNet(weights=None, num_classes=len(labels))
    if state is not None and path is not None:
        state.pop("op_threshs", None)  # a saved copy of the operating points: kept below anyway
        _load_into(model, state, path, f"torchxrayvision DenseNet-121 ({name})")
    model.op_threshs = None     # raw logits out: no sigmoid, no op_norm (see the docstring)
    model.apply_sigmoid = False
    model.targets = labels
    kept = [k for k, label in enumerate(labels) if label]
    op = [float(t) for t in meta.get("op_threshs", [math.nan] * len(labels))]
    # An operating point xrv leaves NaN for a finding it predicts (none among the DenseNets
    # today) falls back to 0.5, the default decision of mladv.tasks.
    thresholds = [op[k] if math.isfinite(op[k]) else 0.5 for k in kept]
    return ModelAdapter(model, task="multilabel", classes=[labels[k] for k in kept],
                        thresholds=thresholds, input_range=XRV_RANGE, channels=1,
                        input_size=int(meta.get("input_resolution", 224)),
                        columns=None if len(kept) == len(labels) else kept, source=source)


# --- TorchScript and Python factories ------------------------------------------------------------

def torchscript_model(path: str | os.PathLike[str], *, task: str,
                      input_range: Sequence[float] = (0.0, 1.0), channels: int = 1,
                      classes: Sequence[str] | None = None,
                      thresholds: Sequence[float] | None = None, mean: Floats | None = None,
                      std: Floats | None = None, input_size: int | None = None) -> ModelAdapter:
    """A TorchScript archive (``torch.jit.save``) as a :class:`ModelAdapter`, loaded on the CPU
    (``torch.jit.load(path, map_location="cpu")``; move the adapter with ``.to(device)``). The
    archive holds its own weights. Options as :class:`ModelAdapter`."""
    check_task(task)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"TorchScript model file not found: {file}")
    try:
        model = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError / more
        raise ValueError(f"{file} is not a TorchScript archive (save one with "
                         f"torch.jit.save(torch.jit.script(model), FILE)): {_one_line(exc)[:200]}"
                         ) from None
    return ModelAdapter(model, task=task, classes=classes, thresholds=thresholds,
                        input_range=input_range, channels=channels, mean=mean, std=std,
                        input_size=input_size, source=f"torchscript:{file}")


def _resolve_factory(target: str) -> Any:
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"python model spec must be python:pkg.module:factory, got "
                         f"'python:{target}'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"python:{target}: cannot import {module_name!r} ({_one_line(exc)}; is "
                         "its folder on PYTHONPATH?)") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ValueError(f"python:{target}: importing {module_name!r} failed: "
                         f"{exc.__class__.__name__}: {_one_line(exc)}") from None
    try:
        factory = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ValueError(f"python:{target}: module {module_name!r} has no {attr!r}") from None
    if not callable(factory):
        raise ValueError(f"python:{target}: {attr!r} is a {type(factory).__name__}, not a "
                         "callable factory")
    return factory


def python_model(target: str, *, task: str, kwargs: Mapping[str, Any] | None = None,
                 weights_file: str | os.PathLike[str] | None = None,
                 input_range: Sequence[float] = (0.0, 1.0), channels: int = 1,
                 classes: Sequence[str] | None = None,
                 thresholds: Sequence[float] | None = None, mean: Floats | None = None,
                 std: Floats | None = None, input_size: int | None = None) -> ModelAdapter:
    """``pkg.module:factory`` as a :class:`ModelAdapter`: import ``pkg.module``, call
    ``factory(**kwargs)`` (no arguments by default), expect a ``torch.nn.Module``; with
    ``weights_file``, load a state dict into it (``weights_only=True``, strict). Options as
    :class:`ModelAdapter`."""
    check_task(task)
    path = None if weights_file is None else Path(weights_file)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    factory = _resolve_factory(target)
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise ValueError(f"python:{target}: the factory raised {exc.__class__.__name__}: "
                         f"{_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"python:{target}: the factory returned a {type(model).__name__}, not a "
                         "torch.nn.Module")
    if path is not None:
        _load_into(model, _load_state_dict(path), path, f"python:{target}")
    return ModelAdapter(model, task=task, classes=classes, thresholds=thresholds,
                        input_range=input_range, channels=channels, mean=mean, std=std,
                        input_size=input_size, source=f"python:{target}")


def load_model_spec(spec: str, *, weights_file: str | os.PathLike[str] | None = None,
                    input_range: Sequence[float] | None = None, channels: int | None = None,
                    task: str | None = None, classes: Sequence[str] | None = None,
                    thresholds: Sequence[float] | None = None, mean: Floats | None = None,
                    std: Floats | None = None, input_size: int | None = None,
                    image_size: int | None = None) -> ModelAdapter:
    """The model a ``--model SPEC`` names, as a :class:`ModelAdapter`:

    - ``xrv:NAME``: :func:`xrv_model` (``weights_file`` optional); its range, channels, task
      (multilabel), names, thresholds and input size are fixed, so ``input_range``,
      ``channels``, ``classes``, ``thresholds``, ``mean``, ``std``, ``input_size`` and a task
      other than multilabel are refused;
    - ``torchscript:FILE``: :func:`torchscript_model` (``task`` required; no ``weights_file``:
      the archive holds its weights);
    - ``python:pkg.module:factory``: :func:`python_model` (``task`` required).

    With ``image_size``, one ``1 x 1 x S x S`` probe checks the model's number of logits
    against ``classes`` now (:meth:`ModelAdapter.probe`). Every refusal is one line naming the
    option (and its CLI flag) before any model is built.
    """
    if not isinstance(spec, str):
        raise ValueError(f"model spec must be a string ({SPEC_FORMS}), got {type(spec).__name__}")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SPEC_KINDS or not rest.strip():
        raise ValueError(f"model spec must be {SPEC_FORMS}, got {spec!r}")
    if task is not None:
        check_task(task)
    if channels is not None:
        _check_channels(channels)
    if input_range is not None:
        _check_range(input_range)
    if kind == "xrv":
        fixed = {"input_range (--input-range)": input_range, "channels (--channels)": channels,
                 "classes": classes, "thresholds": thresholds, "mean": mean, "std": std,
                 "input_size": input_size}
        for option, value in fixed.items():
            if value is not None:
                raise ValueError(f"{option} does not apply to xrv: models (their range "
                                 "[-1024, 1024], 1 channel, findings, thresholds and 224 px are "
                                 "fixed)")
        if task is not None and task != "multilabel":
            raise ValueError(f"task (--task) {task!r} does not apply to xrv: models (they are "
                             "multilabel)")
        adapter = xrv_model(rest, weights_file=weights_file)
    else:
        if task is None:
            raise ValueError(f"task (--task multiclass|multilabel) is required for {kind}: models")
        options: dict[str, Any] = {
            "task": task, "input_range": (0.0, 1.0) if input_range is None else input_range,
            "channels": 1 if channels is None else channels, "classes": classes,
            "thresholds": thresholds, "mean": mean, "std": std, "input_size": input_size}
        if kind == "torchscript":
            if weights_file is not None:
                raise ValueError("weights_file (--weights-file) does not apply to torchscript: "
                                 "models (the archive holds its weights)")
            adapter = torchscript_model(rest, **options)
        else:
            adapter = python_model(rest, weights_file=weights_file, **options)
    if image_size is not None:
        adapter.probe(image_size)
    return adapter
