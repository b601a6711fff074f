"""DICOM reading: photometric interpretations, value transforms, frames, spacing, errors, no PHI."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MPEG4HP41,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from sonocad.errors import InputError
from sonocad.io.images import is_image_file, iter_frames, read_image, widen_to_16_bits
from sonocad.transforms import to_unit_float

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19700101"}


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2",
                bits_stored: int = 8, **elements: object) -> Path:
    """An uncompressed DICOM file (with a patient) made by pydicom, as a scanner would write it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in {**PATIENT, **elements}.items():
        setattr(ds, keyword, value)
    if pixels is None:
        ds.SOPInstanceUID = generate_uid()
    else:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    multi_frame = int(ds.get("NumberOfFrames", 1)) > 1
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if multi_frame else UltrasoundImageStorage
    ds.save_as(path, enforce_file_format=True)
    return path


def write_encapsulated(path: Path, syntax: str, fragment: bytes, shape: tuple[int, int],
                       photometric: str = "YBR_FULL_422") -> Path:
    """A compressed single-frame colour DICOM file holding `fragment` as its only frame."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def ultrasound_region(delta_x_cm: float, delta_y_cm: float, units: int = 3) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.PhysicalUnitsXDirection = units
    region.PhysicalUnitsYDirection = units
    region.PhysicalDeltaX = delta_x_cm
    region.PhysicalDeltaY = delta_y_cm
    return region


GREY8 = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
GREY12 = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 21)  # 0..4011, within 12 bits


def test_monochrome2_8bit_is_kept_exactly(tmp_path: Path) -> None:
    image = read_image(write_dicom(tmp_path / "a.dcm", GREY8))
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, GREY8)
    assert image.spacing_mm is None
    assert image.pixels.flags.writeable


def test_monochrome1_is_inverted_within_its_bit_depth(tmp_path: Path) -> None:
    eight = read_image(write_dicom(tmp_path / "a.dcm", GREY8, "MONOCHROME1"))
    np.testing.assert_array_equal(eight.pixels, 255 - GREY8)
    twelve = read_image(write_dicom(tmp_path / "b.dcm", GREY12, "MONOCHROME1", bits_stored=12))
    assert twelve.pixels.dtype == np.uint16
    np.testing.assert_array_equal(twelve.pixels, widen_to_16_bits(4095 - GREY12, 12))


def test_12bit_monochrome2_is_widened_from_bits_stored_to_uint16(tmp_path: Path) -> None:
    image = read_image(write_dicom(tmp_path / "a.dcm", GREY12, bits_stored=12))
    assert image.pixels.dtype == np.uint16
    expected = np.rint(GREY12 * (65535 / 4095)).astype(np.uint16)
    np.testing.assert_array_equal(image.pixels, expected)


def test_12bit_dicom_reaches_the_model_as_bright_as_its_8bit_twin(tmp_path: Path) -> None:
    """BitsStored = 12 read as if 16 made a frame 16 x too dark (a malignant lesion, 0.996
    read right, became 'normal'): the model input must not depend on the container."""
    twelve = read_image(write_dicom(tmp_path / "a.dcm", GREY8.astype(np.uint16) * 16 + 8,
                                    bits_stored=12)).pixels
    eight = read_image(write_dicom(tmp_path / "b.dcm", GREY8)).pixels
    np.testing.assert_allclose(to_unit_float(twelve), to_unit_float(eight), atol=1 / 255)


def test_rescale_to_negative_units_is_stretched_onto_uint16(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", GREY12, bits_stored=12,
                       RescaleSlope=1, RescaleIntercept=-1024)
    pixels = read_image(path).pixels
    assert pixels.dtype == np.uint16
    assert (pixels.min(), pixels.max()) == (0, 65535)
    assert (np.diff(pixels.ravel().astype(int)) > 0).all()  # order of grey levels survives


def test_window_is_applied_and_saturates_outside(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", GREY8, WindowCenter=100, WindowWidth=50)
    pixels = read_image(path).pixels
    assert pixels.dtype == np.uint8
    pixels = pixels.astype(int)
    assert (pixels[GREY8 < 75] == 0).all()
    assert (pixels[GREY8 > 125] == 255).all()
    inside = (GREY8 > 76) & (GREY8 < 124)
    assert (np.diff(pixels[inside]) > 0).all()


def test_rgb_is_kept_exactly(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    image = read_image(write_dicom(tmp_path / "a.dcm", rgb, "RGB"))
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb)


def test_ybr_full_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    pixels = read_image(write_dicom(tmp_path / "a.dcm", ybr, "YBR_FULL")).pixels
    assert pixels.shape == rgb.shape and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - rgb).max() <= 2  # YCbCr rounding both ways


def test_jpeg_baseline_ybr_full_422_decodes_to_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16], rgb[:, 16:] = (200, 30, 30), (30, 30, 200)
    jpeg = io.BytesIO()
    PILImage.fromarray(rgb).save(jpeg, "JPEG", quality=95, subsampling=1)  # 4:2:2
    path = write_encapsulated(tmp_path / "a.dcm", JPEGBaseline8Bit, jpeg.getvalue(), (16, 32))
    pixels = read_image(path).pixels
    assert pixels.shape == (16, 32, 3)
    assert np.abs(pixels[4:12, 2:12].astype(int) - (200, 30, 30)).max() <= 8
    assert np.abs(pixels[4:12, 20:30].astype(int) - (30, 30, 200)).max() <= 8


def test_palette_colour_goes_through_its_lookup_table(tmp_path: Path) -> None:
    lut = np.arange(256, dtype=np.uint16)
    indices = np.array([[0, 1, 2], [10, 100, 255]], np.uint8)
    path = write_dicom(
        tmp_path / "a.dcm", indices, "PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[256, 0, 8],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 8],
        BluePaletteColorLookupTableDescriptor=[256, 0, 8],
        RedPaletteColorLookupTableData=lut.tobytes(),
        GreenPaletteColorLookupTableData=(255 - lut).tobytes(),
        BluePaletteColorLookupTableData=np.full(256, 7, np.uint16).tobytes(),
    )
    pixels = read_image(path).pixels
    assert pixels.shape == (2, 3, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], indices)
    np.testing.assert_array_equal(pixels[..., 1], 255 - indices)
    assert (pixels[..., 2] == 7).all()


def test_multiframe_first_frame_and_every_frame(tmp_path: Path) -> None:
    frames = np.stack([GREY8, GREY8 // 2, 255 - GREY8])
    path = write_dicom(tmp_path / "cine.dcm", frames,
                       SequenceOfUltrasoundRegions=[ultrasound_region(0.01, 0.02)])
    first = read_image(path)
    np.testing.assert_array_equal(first.pixels, frames[0])
    read = list(iter_frames(path))
    assert len(read) == 3
    for got, expected in zip(read, frames):
        np.testing.assert_array_equal(got.pixels, expected)
        assert got.spacing_mm == pytest.approx((0.2, 0.1))


def test_multiframe_rgb(tmp_path: Path) -> None:
    frames = np.random.default_rng(2).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    read = [image.pixels for image in iter_frames(write_dicom(tmp_path / "a.dcm", frames, "RGB"))]
    np.testing.assert_array_equal(np.stack(read), frames)


def test_ultrasound_region_spacing_cm_becomes_mm(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", GREY8,
                       SequenceOfUltrasoundRegions=[ultrasound_region(0.0075, 0.005)])
    assert read_image(path).spacing_mm == pytest.approx((0.05, 0.075))  # (row, column)


def test_ultrasound_regions_ignore_other_units_and_refuse_disagreement(tmp_path: Path) -> None:
    seconds = ultrasound_region(0.5, 0.5, units=4)  # a Doppler time axis, not a distance
    agreeing = write_dicom(tmp_path / "a.dcm", GREY8, SequenceOfUltrasoundRegions=[
        seconds, ultrasound_region(0.01, 0.01)])
    assert read_image(agreeing).spacing_mm == pytest.approx((0.1, 0.1))
    differing = write_dicom(tmp_path / "b.dcm", GREY8, SequenceOfUltrasoundRegions=[
        ultrasound_region(0.01, 0.01), ultrasound_region(0.02, 0.02)])
    assert read_image(differing).spacing_mm is None


def test_pixel_spacing_wins_over_imager_spacing_and_regions(tmp_path: Path) -> None:
    region = [ultrasound_region(0.01, 0.01)]
    both = write_dicom(tmp_path / "a.dcm", GREY8, PixelSpacing=[0.3, 0.4],
                       ImagerPixelSpacing=[0.5, 0.5], SequenceOfUltrasoundRegions=region)
    assert read_image(both).spacing_mm == pytest.approx((0.3, 0.4))
    imager = write_dicom(tmp_path / "b.dcm", GREY8, ImagerPixelSpacing=[0.5, 0.6],
                         SequenceOfUltrasoundRegions=region)
    assert read_image(imager).spacing_mm == pytest.approx((0.5, 0.6))


def test_extensionless_dicom_is_found_by_its_preamble(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM00001", GREY8)
    np.testing.assert_array_equal(read_image(path).pixels, GREY8)
    assert is_image_file(path)
    dicomdir = write_dicom(tmp_path / "DICOMDIR", None)
    assert not is_image_file(dicomdir)
    (tmp_path / "notes").write_text("x" * 200)
    assert not is_image_file(tmp_path / "notes")


def test_missing_pixel_data_is_an_input_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "empty.dcm", None)
    with pytest.raises(InputError, match="no pixel data") as caught:
        read_image(path)
    assert caught.value.path == path


def test_errors_and_logs_never_carry_patient_attributes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    no_pixels = write_dicom(tmp_path / "a.dcm", None)
    good = write_dicom(tmp_path / "b.dcm", GREY8)
    truncated = tmp_path / "c.dcm"
    truncated.write_bytes(good.read_bytes()[:-7])
    messages = []
    for path in (no_pixels, truncated):
        with pytest.raises(InputError) as caught:
            read_image(path)
        messages.append(str(caught.value))
    messages.append(repr(read_image(good)))
    messages.extend(record.getMessage() for record in caplog.records)
    for text in messages:
        for value in ("Doe", "Jane", "PID-4711", "19700101"):
            assert value not in text


def test_truncated_pixel_data_is_an_input_error(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", GREY8)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(InputError, match="cannot decode DICOM pixel data"):
        read_image(truncated)
    short_meta = tmp_path / "short.dcm"
    short_meta.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="transfer syntax"):
        read_image(short_meta)


def test_text_named_dcm_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_text("not a DICOM file\n" * 20)
    with pytest.raises(InputError, match="not a DICOM file"):
        read_image(path)


def test_compressed_without_plugin_says_what_to_install(tmp_path: Path) -> None:
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_encapsulated(tmp_path / "a.dcm", JPEGLSLossless, b"\xff\xd8" + b"\0" * 64,
                              (8, 8), photometric="RGB")
    with pytest.raises(InputError, match="decoder plugin that is not installed.*pylibjpeg"):
        read_image(path)


def test_video_transfer_syntax_is_refused(tmp_path: Path) -> None:
    path = write_encapsulated(tmp_path / "a.dcm", MPEG4HP41, b"\0" * 64, (8, 8))
    with pytest.raises(InputError, match="not supported"):
        iter_frames(path)  # refused on call, before any frame is asked for
