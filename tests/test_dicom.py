"""DICOM reading (mladv.data.dicom through read_image): the grayscale pipeline of DICOM PS3.3
C.11 (modality LUT, VOI LUT, polarity) and the compressed transfer syntaxes.

Expected values come from the standard's formulas applied by hand to the stored values (read
straight from the uncompressed Pixel Data bytes), from the reference pixel values of pydicom's own
test suite (tests/pixels/pixels_reference.py, decoded there by pylibjpeg / GDCM), or from an
uncompressed twin of a compressed file. Only the test files bundled inside the pydicom package are
used (pydicom.data.get_testdata_file with download=False): no network.

Built by modifying a bundled file (saved under tmp_path): MONOCHROME1 and Presentation LUT Shape
variants of MR_small.dcm (none are bundled); VOI LUT Sequences on small synthetic datasets
(vlut_04.dcm is not bundled).
"""
import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from mladv.data import DataError, load_folder, load_source, read_image

MR_CENTER, MR_WIDTH = 600.0, 1600.0  # MR_small.dcm's Window Center / Width (its header)


def bundled(name):
    """A test file shipped inside the pydicom package (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"{name} is not bundled with pydicom {pydicom.__version__}")
    return path


def needs_decoder(name):
    """``bundled(name)`` when an installed plugin decodes its transfer syntax; else skip, or
    fail under CI=true (CI installs the ``dicom`` extra)."""
    path = bundled(name)
    uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(uid).is_available:
        msg = f"no decoder for {uid.name} installed (pip install 'mladv[dicom]')"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{msg}; CI=true, so the DICOM decoder tests must run", pytrace=False)
        pytest.skip(msg)
    return path


def mr_stored():
    """MR_small.dcm's stored values, read straight from its little-endian signed Pixel Data."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    return np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns).astype(float)


def mr_copy(tmp_path, name="mr.dcm", **attrs):
    """MR_small.dcm with ``attrs`` set, saved under ``tmp_path``."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / name)
    return tmp_path / name


def linear_window(x, center, width):
    """PS3.3 C.11.2.1.2.1 (LINEAR) with the output range mapped to [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def _dicom(path, arr, bits_stored=16, signed=False, voi_lut=None, **attrs):
    """A small uncompressed MONOCHROME2 file; ``voi_lut=(descriptor, data)`` adds a VOI LUT
    Sequence item."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, int(signed)
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key, value in attrs.items():
        setattr(ds, key, value)
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", list(voi_lut[0]))  # LUT Descriptor
        item.add_new(0x00283006, "US", list(voi_lut[1]))  # LUT Data
        ds.VOILUTSequence = [item]
    ds.PixelData = arr.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# -- no VOI: the stored range ----------------------------------------------------------------------
def test_dicom_without_window_is_scaled_by_its_stored_range(tmp_path):
    arr = (np.arange(36 * 36).reshape(36, 36) % 3000 + 500).astype(np.uint16)  # 12-bit values
    out = read_image(_dicom(tmp_path / "x.dcm", arr, bits_stored=12))
    assert out.shape == (36, 36)
    np.testing.assert_allclose(out, arr / 4095, rtol=0, atol=1e-7)  # not stretched to [0, 1]
    assert out.min() > 0.1 and out.max() < 0.86


def test_signed_dicom_is_offset_by_half_its_range(tmp_path):
    arr = np.array([[-2048, 0], [2047, 100]]).repeat(18, 0).repeat(18, 1)
    out = read_image(_dicom(tmp_path / "s.dcm", arr, bits_stored=12, signed=True))
    np.testing.assert_allclose(out, (arr + 2048) / 4095, atol=1e-7)


def test_rescale_without_window_keeps_the_stored_range_scaling(tmp_path):
    arr = (np.arange(36 * 36).reshape(36, 36) % 4096).astype(np.uint16)
    path = _dicom(tmp_path / "r.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024)
    np.testing.assert_allclose(read_image(path), arr / 4095, atol=1e-6)


# -- VOI: windows ----------------------------------------------------------------------------------
def test_dicom_window_is_applied_after_the_rescale(tmp_path):
    arr = np.arange(36 * 36).reshape(36, 36).astype(np.uint16)
    path = _dicom(tmp_path / "w.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100,
                  WindowCenter=1000, WindowWidth=801)
    hu = arr * 2.0 - 100
    expected = np.clip((hu - 999.5) / 800 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1, linear
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)
    assert (read_image(path) == 0).any() and (read_image(path) == 1).any()


def test_bundled_mr_is_windowed_by_the_linear_formula():
    expected = linear_window(mr_stored(), MR_CENTER, MR_WIDTH)
    np.testing.assert_allclose(read_image(bundled("MR_small.dcm")), expected, atol=1e-6)


def test_the_first_of_several_windows_is_used(tmp_path):
    arr = np.arange(36 * 36).reshape(36, 36).astype(np.uint16)
    path = _dicom(tmp_path / "w2.dcm", arr, bits_stored=12, WindowCenter=[700, 40],
                  WindowWidth=[1001, 80])
    np.testing.assert_allclose(read_image(path), linear_window(arr, 700, 1001), atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function_is_honoured(tmp_path, function):
    arr = np.arange(36 * 36).reshape(36, 36).astype(np.uint16)
    path = _dicom(tmp_path / "f.dcm", arr, bits_stored=12, WindowCenter=600, WindowWidth=400,
                  VOILUTFunction=function)
    x = arr.astype(float)
    expected = (np.clip((x - 600) / 400 + 0.5, 0, 1) if function == "LINEAR_EXACT"  # C.11.2.1.3.2
                else 1 / (1 + np.exp(-4 * (x - 600) / 400)))                        # C.11.2.1.3.1
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_raw_mode_ignores_the_window_and_keeps_the_stored_range():
    out = read_image(bundled("MR_small.dcm"), dicom_mode="raw")
    np.testing.assert_allclose(out, (mr_stored() + 32768) / 65535, atol=1e-7)  # signed 16-bit


def test_window_narrower_than_one_counts_as_no_window(tmp_path):
    arr = (np.arange(36 * 36).reshape(36, 36) % 4096).astype(np.uint16)
    path = _dicom(tmp_path / "w0.dcm", arr, bits_stored=12, WindowCenter=600, WindowWidth=0)
    np.testing.assert_allclose(read_image(path), arr / 4095, atol=1e-7)  # the stored range


# -- VOI: the VOI LUT Sequence ---------------------------------------------------------------------
def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    arr = (np.arange(36 * 36).reshape(36, 36) * 2).astype(np.uint16)  # 0 .. 2590
    lut = [40 * i for i in range(1000)]  # 16 bits per entry, first mapped value 500
    path = _dicom(tmp_path / "l.dcm", arr, bits_stored=12, WindowCenter=1000, WindowWidth=801,
                  voi_lut=([1000, 500, 16], lut))
    # PS3.3 C.11.2.1.1: below the first mapped value -> the first entry, past the end -> the
    # last; the output range is the LUT's 16 bits (not the 12 bits stored)
    expected = 40 * np.clip(arr.astype(float) - 500, 0, 999) / 65535
    np.testing.assert_allclose(read_image(path), expected, atol=1e-7)


def test_eight_bit_voi_lut_with_more_than_256_entries_is_indexed_in_full(tmp_path):
    arr = np.array([[0, 300], [2000, 4095]], dtype=np.uint16).repeat(18, 0).repeat(18, 1)
    lut = [i // 16 for i in range(4096)]  # 8 bits per entry
    path = _dicom(tmp_path / "l8.dcm", arr, bits_stored=12, voi_lut=([4096, 0, 8], lut))
    np.testing.assert_allclose(read_image(path), (arr // 16) / 255, atol=1e-7)


def test_raw_mode_ignores_the_voi_lut_sequence(tmp_path):
    arr = (np.arange(36 * 36).reshape(36, 36) * 2).astype(np.uint16)
    path = _dicom(tmp_path / "l.dcm", arr, bits_stored=12,
                  voi_lut=([4096, 0, 12], [4095 - i for i in range(4096)]))
    np.testing.assert_allclose(read_image(path, dicom_mode="raw"), arr / 4095, atol=1e-7)


# -- polarity: MONOCHROME1 and the Presentation LUT Shape ------------------------------------------
def test_monochrome1_dicom_is_inverted(tmp_path):
    arr = np.full((36, 36), 1000, dtype=np.uint16)
    path = _dicom(tmp_path / "m.dcm", arr, bits_stored=12, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(read_image(path), 1 - 1000 / 4095, atol=1e-7)


@pytest.mark.parametrize("mode", ["voi", "raw"])
def test_monochrome1_is_one_minus_monochrome2_of_the_same_data(tmp_path, mode):
    mono1 = read_image(mr_copy(tmp_path, PhotometricInterpretation="MONOCHROME1"), dicom_mode=mode)
    mono2 = read_image(bundled("MR_small.dcm"), dicom_mode=mode)
    np.testing.assert_allclose(mono1, 1 - mono2, atol=1e-6)
    assert not np.allclose(mono2, 0.5)  # a real test: the image is not flat grey


def test_inverse_presentation_lut_shape_is_one_minus_identity(tmp_path):
    inverse = read_image(mr_copy(tmp_path, "inv.dcm", PresentationLUTShape="INVERSE"))
    identity = read_image(mr_copy(tmp_path, "id.dcm", PresentationLUTShape="IDENTITY"))
    np.testing.assert_allclose(identity, linear_window(mr_stored(), MR_CENTER, MR_WIDTH),
                               atol=1e-6)
    np.testing.assert_allclose(inverse, 1 - identity, atol=1e-6)


def test_monochrome1_with_inverse_shape_is_inverted_once(tmp_path):
    # General / DX Image Module: INVERSE is the shape a MONOCHROME1 image carries; one inversion
    path = mr_copy(tmp_path, PhotometricInterpretation="MONOCHROME1",
                   PresentationLUTShape="INVERSE")
    expected = 1 - linear_window(mr_stored(), MR_CENTER, MR_WIDTH)
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


# -- colour ---------------------------------------------------------------------------------------
def test_palette_colour_goes_through_its_palette(tmp_path):
    index = np.arange(36 * 36).reshape(36, 36) % 256
    path = _dicom(tmp_path / "p.dcm", index, bits_stored=8,
                  PhotometricInterpretation="PALETTE COLOR")
    ds = pydicom.dcmread(path)
    ramp = (np.arange(256) * 257).astype("<u2")  # 16-bit palette entries
    for colour, data in (("Red", ramp), ("Green", ramp), ("Blue", np.zeros(256, "<u2"))):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", data.tobytes())
    ds.save_as(path)
    expected = (2 * index * 257 / 3) / 65535  # mean of (R, G, B) over the palette's 16 bits
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


# -- compressed transfer syntaxes ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
@pytest.mark.parametrize("mode", ["voi", "raw"])
def test_lossless_copy_decodes_to_its_uncompressed_twin(name, mode):
    np.testing.assert_array_equal(read_image(needs_decoder(name), dicom_mode=mode),
                                  read_image(bundled("MR_small.dcm"), dicom_mode=mode))


# rows 5, 15, ..., 95 of column 50 of SC_rgb.dcm (pydicom's reference), as grey = mean(R, G, B)
SC_RGB_COLUMN = [(255, 0, 0), (255, 128, 128), (0, 255, 0), (128, 255, 128), (0, 0, 255),
                 (128, 128, 255), (0, 0, 0), (64, 64, 64), (192, 192, 192), (255, 255, 255)]


def test_jpeg_lossless_decodes_to_the_reference_pixels():
    out = read_image(needs_decoder("SC_rgb_jpeg_gdcm.dcm"))  # 1.2.840.10008.1.2.4.70
    expected = [sum(rgb) / 3 / 255 for rgb in SC_RGB_COLUMN]
    np.testing.assert_allclose(out[5::10, 50], expected, atol=1e-6)


def test_jpeg_lossless_equals_its_rle_twin():
    np.testing.assert_array_equal(read_image(needs_decoder("SC_rgb_jpeg_gdcm.dcm")),
                                  read_image(needs_decoder("SC_rgb_rle.dcm")))


def test_twelve_bit_jpeg_is_scaled_by_its_twelve_bits():
    out = read_image(needs_decoder("JPGExtended.dcm"))  # JPEG Extended, 12 bits stored
    assert out.shape == (1024, 256)
    np.testing.assert_allclose([out[420, 140], out[230, 120]], [244 / 4095, 95 / 4095],
                               atol=1e-7)


def test_jpeg_ls_sixteen_bit_decodes_to_the_reference_pixels():
    out = read_image(needs_decoder("JPEGLSNearLossless_16.dcm"))
    reference = [65535, 32765, 16385, 4095, 1025, 255, 65, 15, 5]  # rows 0, 5, ..., 40
    np.testing.assert_allclose(out[0:45:5, 0], np.array(reference) / 65535, atol=1e-7)


def test_multi_frame_file_gives_its_first_frame():
    out = read_image(bundled("SC_rgb_rle_2frame.dcm"))  # frame 2 is frame 1 inverted
    expected = [sum(rgb) / 3 / 255 for rgb in SC_RGB_COLUMN]
    np.testing.assert_allclose(out[5::10, 50], expected, atol=1e-6)


def test_missing_decoder_names_the_file_the_syntax_and_the_extra(monkeypatch):
    path = bundled("SC_rgb_jpeg_gdcm.dcm")
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})  # no plugin installed
    with pytest.raises(DataError) as info:
        read_image(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "JPEG Lossless" in msg and "1.2.840.10008.1.2.4.70" in msg
    assert 'pip install "mladv[dicom]"' in msg


def test_file_without_pixel_data_is_named(tmp_path):
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(DataError, match=r"empty\.dcm: DICOM file has no pixel data"):
        read_image(tmp_path / "empty.dcm")


def test_undecodable_file_error_is_one_line():
    with pytest.raises(DataError) as info:
        read_image(bundled("JPEG-lossy.dcm"))  # a broken scan header no decoder accepts
    assert "\n" not in str(info.value) and "JPEG-lossy.dcm" in str(info.value)


# -- the mode through the loaders ------------------------------------------------------------------
def test_unknown_dicom_mode_is_refused_naming_the_argument():
    with pytest.raises(DataError, match="dicom_mode: 'window' is not one of voi, raw"):
        read_image(bundled("MR_small.dcm"), dicom_mode="window")


def _dicom_folder(root):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            pydicom.dcmread(bundled("MR_small.dcm")).save_as(root / c / f"{i}.dcm")
    return root


def test_unknown_dicom_mode_is_refused_by_the_loader_before_reading(tmp_path):
    root = _dicom_folder(tmp_path / "d")
    # with skip_bad a per-file error would be swallowed: the refusal comes before any file
    with pytest.raises(DataError, match="dicom_mode: 'window' is not one of"):
        load_folder(root, image_size=64, dicom_mode="window", skip_bad=True)


@pytest.mark.parametrize("mode", ["voi", "raw"])
def test_load_folder_and_load_source_pass_the_dicom_mode(tmp_path, mode):
    root = _dicom_folder(tmp_path / "d")
    expected = (linear_window(mr_stored(), MR_CENTER, MR_WIDTH) if mode == "voi"
                else (mr_stored() + 32768) / 65535)
    for data in (load_folder(root, image_size=64, dicom_mode=mode, cache=False),
                 load_source(str(root), image_size=64, dicom_mode=mode)):
        np.testing.assert_allclose(data.images[0, 0].numpy(), expected, atol=1e-6)
