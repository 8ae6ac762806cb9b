"""One DICOM frame as a grayscale float32 array in [0, 1], through the DICOM grayscale pipeline.

The transforms are pydicom's (``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut`` /
``apply_color_lut``); this module only picks them, in the standard's order, and scales the result
to [0, 1] by the **output range of the last transform**, never by the image's own min / max.

``dicom_mode="voi"`` (the default), for a grayscale (MONOCHROME1 / MONOCHROME2) frame:

1. **Modality LUT** (DICOM PS3.3 C.11.1): the Modality LUT Sequence, else Rescale Slope /
   Intercept (``y = m x + b``), else the stored values.
2. **VOI LUT** (PS3.3 C.11.2), index 0: the VOI LUT Sequence (C.11.2.1.1) wins over Window
   Center / Width (C.11.2.1.2; ``prefer_lut=True``). The window's LINEAR function is
   ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1] (C.11.2.1.2.1), LINEAR_EXACT
   ``(x - c) / w + 0.5`` (C.11.2.1.3.2), SIGMOID ``1 / (1 + exp(-4 (x - c) / w))``
   (C.11.2.1.3.1) -- each scaled here by the window's output range ``[y_min, y_max]``; a VOI LUT
   with ``n`` bits per entry (third LUT Descriptor value) by ``2**n - 1``.
3. **Polarity** (after the VOI transform, PS3.3 C.7.6.3.1.2): MONOCHROME1 is displayed with its
   minimum as white, so ``v -> 1 - v``. Where the file carries a **Presentation LUT Shape**
   (2050,0020) it states the polarity of the output itself (PS3.3 C.11.6.1, and the General / DX
   Image Modules C.7.6.1, C.8.11.3: ``INVERSE`` -- "output after inversion is in P-Values" -- is
   the value a MONOCHROME1 image carries, ``IDENTITY`` the value of a MONOCHROME2 one), so it
   replaces the MONOCHROME1 rule instead of adding a second inversion: ``INVERSE`` inverts,
   ``IDENTITY`` does not (the default of dcm4che; a MONOCHROME1 + INVERSE file is inverted once).

Without a usable VOI (no VOI LUT Sequence, no window, or a window pydicom refuses: width < 1
for LINEAR) the frame is scaled by the modality output range of the stored range
``[lo, hi]`` (``lo = 0``, ``hi = 2**BitsStored - 1``, or ``-2**(BitsStored-1)`` ..
``2**(BitsStored-1) - 1`` when signed), which for a rescale is the stored range itself:
``(v - lo) / (hi - lo)``, i.e. ``v / (2**BitsStored - 1)`` for unsigned data.

``dicom_mode="raw"``: steps 1 and 3 only (no VOI), scaled as just described.

Colour frames (RGB, YBR_*: converted to RGB by pydicom) are averaged over the channels and
scaled by the stored range; PALETTE COLOR goes through its palette (``apply_color_lut``) and is
scaled by the palette's ``2**bits - 1``. A multi-frame file gives its first frame.

Compressed transfer syntaxes (JPEG Lossless, JPEG-LS, 12-bit JPEG, JPEG 2000) need the
pylibjpeg plugins (``pip install "mladv[dicom]"``); without them the error names the file, the
transfer syntax and that command. RLE and uncompressed data decode with pydicom alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DicomMode = Literal["voi", "raw"]
DICOM_MODES: tuple[str, ...] = get_args(DicomMode)
INSTALL_HINT = 'pip install "mladv[dicom]"'
_GREY = ("MONOCHROME1", "MONOCHROME2")


class DicomError(ValueError):
    """A DICOM file that cannot be read; the message names the file (``read_image`` turns it
    into a ``DataError`` with the same text)."""


def check_dicom_mode(mode: str) -> DicomMode:
    """``mode`` if it is one of :data:`DICOM_MODES`; ``DicomError`` naming ``dicom_mode``
    otherwise (call it before any compute)."""
    if mode not in DICOM_MODES:
        raise DicomError(f"dicom_mode: {mode!r} is not one of {', '.join(DICOM_MODES)}")
    return cast(DicomMode, mode)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_decoder(ds: Dataset, path: Path) -> None:
    """``DicomError`` naming the file, the transfer syntax and the install command when no
    installed plugin can decode the file's (compressed) transfer syntax."""
    from pydicom.pixels.decoders.base import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None or not uid.is_compressed:
        return
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        raise DicomError(f"{path}: pydicom has no decoder for the transfer syntax {uid.name} "
                         f"({uid})") from None
    if not available:
        raise DicomError(f"{path}: cannot decode the transfer syntax {uid.name} ({uid}): no "
                         f"decoder plugin is installed; {INSTALL_HINT}")


def _first_frame(ds: Dataset, path: Path) -> np.ndarray:
    """The decoded stored values of frame 0: ``H x W`` (grey) or ``H x W x 3`` (colour)."""
    if "PixelData" not in ds:
        raise DicomError(f"{path}: DICOM file has no pixel data")
    _check_decoder(ds, path)
    ds.pixel_array_options(index=0)  # decode only the first frame of a multi-frame file
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - the decoders raise many kinds, multi-line
        uid = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        raise DicomError(f"{path}: cannot decode the pixel data ({getattr(uid, 'name', uid)}): "
                         f"{_one_line(exc)}") from None


def _stored_range(ds: Dataset, arr: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` of the stored values (Bits Stored, Pixel Representation: PS3.3 C.7.6.3)."""
    bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize) or 8 * arr.dtype.itemsize)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _lut_bits(item: Dataset) -> int:
    return int(cast(list[int], item.LUTDescriptor)[2])


def _modality(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float]:
    """Modality LUT (PS3.3 C.11.1) and its output range over the stored range."""
    from pydicom.pixels.processing import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        top = 2.0 ** _lut_bits(ds.ModalityLUTSequence[0]) - 1
        return np.asarray(apply_modality_lut(arr, ds)), 0.0, top
    lo, hi = _stored_range(ds, arr)
    ends = np.asarray(apply_modality_lut(np.array([lo, hi]), ds), dtype=np.float64)
    return np.asarray(apply_modality_lut(arr, ds)), float(ends[0]), float(ends[1])


def _window_ok(ds: Dataset) -> bool:
    """Window Center / Width present and usable by pydicom (width >= 1 for LINEAR, > 0 else)."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return False
    width = ds["WindowWidth"].value
    width = float(width[0] if ds["WindowWidth"].VM > 1 else width)
    linear = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() == "LINEAR"
    return width >= 1.0 if linear else width > 0.0


def _voi_lut_ok(ds: Dataset) -> bool:
    """A VOI LUT Sequence whose first item has a LUT Descriptor and LUT Data (pydicom's test)."""
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def _voi(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    """VOI LUT (PS3.3 C.11.2), index 0, VOI LUT Sequence preferred; its output and output
    range, or ``None`` when the file has no usable VOI."""
    from pydicom.pixels.processing import apply_voi_lut, apply_windowing

    if _voi_lut_ok(ds):
        item = ds.VOILUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        bits = descriptor[2]
        if bits == 8 and (descriptor[0] or 2**16) > 256:
            # pydicom 3.0 indexes the LUT through an array of the LUT's own dtype (uint8), which
            # wraps for an 8-bit LUT of more than 256 entries; the entries fit either way.
            item.LUTDescriptor = [descriptor[0], descriptor[1], 16]
        if np.issubdtype(arr.dtype, np.floating):  # a rescale gave floats: LUT input is whole
            arr = np.rint(arr).astype(np.int64)
        # Inputs below the first mapped value take the first entry, above the last the last
        # (C.11.2.1.1); clipping first keeps pydicom's uint16 index from wrapping.
        first, entries = descriptor[1], descriptor[0] or 2**16
        arr = np.clip(arr, first, first + entries - 1)
        out = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        return np.asarray(out, dtype=np.float64), 0.0, 2.0**bits - 1
    if _window_ok(ds):
        out = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        with np.errstate(over="ignore"):  # the output range: the window at -inf and +inf
            ends = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
        return np.asarray(out, dtype=np.float64), float(ends[0]), float(ends[1])
    return None


def inverted(ds: Dataset) -> bool:
    """Whether the output is inverted (module doc, step 3): the Presentation LUT Shape where
    present (``INVERSE``), else Photometric Interpretation ``MONOCHROME1``."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape in ("INVERSE", "IDENTITY"):
        return shape == "INVERSE"
    return str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(v - lo) / (hi - lo)`` clipped to [0, 1] (``hi < lo`` for a negative rescale slope)."""
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def dicom_to_unit(ds: Dataset, arr: np.ndarray, mode: DicomMode = "voi") -> np.ndarray:
    """The pipeline of the module doc on decoded stored values ``arr`` of ``ds``.

    Shape: ``H x W`` (or ``H x W x 3`` colour) stored values -> ``H x W`` float32 in [0, 1].
    """
    mode = check_dicom_mode(mode)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        bits = int(cast(list[int], ds.RedPaletteColorLookupTableDescriptor)[2])
        rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
        return _scale(rgb.mean(-1), 0.0, 2.0**bits - 1)
    if arr.ndim == 3:  # colour: RGB (pydicom converted YBR) averaged to grey
        return _scale(arr.astype(np.float64).mean(-1), *_stored_range(ds, arr))
    out, lo, hi = _modality(arr, ds)
    if mode == "voi" and photometric in _GREY and (voi := _voi(out, ds)) is not None:
        out, lo, hi = voi
    unit = _scale(out, lo, hi)
    return 1.0 - unit if inverted(ds) else unit


def read_dicom(path: str | os.PathLike[str], mode: DicomMode = "voi", **dcmread: Any
               ) -> np.ndarray:
    """Read the first frame of a DICOM file as an ``H x W`` float32 array in [0, 1] (module doc).

    Args:
        path: the file.
        mode: ``"voi"`` (modality LUT, VOI LUT, polarity) or ``"raw"`` (no VOI).
        dcmread: passed to ``pydicom.dcmread`` (e.g. ``force=True``).

    Raises:
        DicomError: one line naming the file (bad mode, no pixel data, no decoder installed for
            its transfer syntax -- with ``pip install "mladv[dicom]"`` -- or a decoding error).
    """
    mode = check_dicom_mode(mode)
    import pydicom

    path = Path(path)
    ds = pydicom.dcmread(path, **dcmread)
    return dicom_to_unit(ds, _first_frame(ds, path), mode)
