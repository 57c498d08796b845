"""DICOM through pydicom's own test files: LUTs, MONOCHROME1, truncated and undecodable files."""
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from src.portable.dicom import pixel_spacing
from src.portable.images import IMAGE_SUFFIXES, read_image


def test_ct_is_windowed_to_8_bits_with_its_contrast():
    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.shape == (128, 128) and image.dtype == np.uint8
    assert len(np.unique(image)) >= 200 and ".dcm" in IMAGE_SUFFIXES


def test_monochrome1_is_inverted_so_that_bone_is_bright(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    normal = read_image(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    inverted = read_image(tmp_path / "mono1.dcm")
    assert np.abs(inverted.astype(int) - (255 - normal.astype(int))).max() <= 1


def test_window_from_the_file_is_applied(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    plain = read_image(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 1000, 200  # a narrow window: most pixels saturate
    ds.save_as(tmp_path / "windowed.dcm")
    windowed = read_image(tmp_path / "windowed.dcm")
    assert (windowed == 0).mean() + (windowed == 255).mean() > (plain == 0).mean() + (plain == 255).mean() + 0.3


def test_truncated_file_is_refused_in_one_line():
    with pytest.raises(ValueError) as error:
        read_image(get_testdata_file("MR_truncated.dcm"))
    message = str(error.value)
    assert "MR_truncated.dcm: unreadable DICOM pixel data" in message and "\n" not in message


def _jpeg_ls_decoder_installed() -> bool:
    from importlib.util import find_spec
    return any(find_spec(name) for name in ("libjpeg", "jpeg_ls", "gdcm"))


@pytest.mark.skipif(_jpeg_ls_decoder_installed(), reason="a JPEG-LS decoder is installed here")
def test_compressed_syntax_without_its_decoder_names_the_package_to_install():
    with pytest.raises(ValueError, match=r"MR_small_jpeg_ls_lossless.dcm: 'JPEG-LS Lossless.*' pixel data needs a "
                                         r"decoder: pip install pylibjpeg"):
        read_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))


def test_not_a_dicom_file(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"hello")
    with pytest.raises(ValueError, match="x.dcm: not a DICOM file"):
        read_image(tmp_path / "x.dcm")


def test_pixel_spacing_in_mm_from_the_header(tmp_path):
    assert pixel_spacing(get_testdata_file("CT_small.dcm")) == pytest.approx((0.661468, 0.661468))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.139, 0.15]  # an X-ray's detector spacing: rows first, then columns
    ds.save_as(tmp_path / "xray.dcm")
    assert pixel_spacing(tmp_path / "xray.dcm") == pytest.approx((0.139, 0.15))
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "none.dcm")
    assert pixel_spacing(tmp_path / "none.dcm") is None
