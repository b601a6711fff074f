"""DICOM reading: photometric interpretations, value transforms, frames, spacing, errors, no PHI."""

from __future__ import annotations

import io
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import Dataset, FileMetaDataset, dcmread, dcmwrite
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    JPEG2000,
    MPEG4HP41,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from conftest import traced_peak_of_refusals
from sonocad.errors import InputError
from sonocad.io import pixels
from sonocad.io.dicom import dicom_frame_count
from sonocad.io.images import is_image_file, iter_frames, read_image
from sonocad.io.pixels import widen_to_16_bits
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


GREY8 = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
GREY12 = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16)  # 0..4080, within 12 bits


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
    rgb = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    image = read_image(write_dicom(tmp_path / "a.dcm", rgb, "RGB"))
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb)


def test_ybr_full_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
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
    indices = np.tile(np.array([[0, 1, 2], [10, 100, 255]], np.uint8), (8, 6))
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
    assert pixels.shape == (16, 18, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], indices)
    np.testing.assert_array_equal(pixels[..., 1], 255 - indices)
    assert (pixels[..., 2] == 7).all()


@pytest.mark.parametrize(("syntax", "photometric", "irreversible"), [
    (JPEG2000Lossless, "YBR_RCT", False), (JPEG2000, "YBR_ICT", True)])
def test_jpeg2000_colour_transforms_decode_to_rgb(tmp_path: Path, syntax: str,
                                                   photometric: str, irreversible: bool) -> None:
    # How scanners write JPEG 2000 colour (US1_J2KR.dcm, US1_J2KI.dcm): the decoder undoes the
    # transform. The reversible one gives back the RGB exactly.
    rgb = np.random.default_rng(3).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    codestream = io.BytesIO()
    PILImage.fromarray(rgb).save(codestream, "JPEG2000", no_jp2=True, mct=1,
                                 irreversible=irreversible)
    path = write_encapsulated(tmp_path / "a.dcm", syntax, codestream.getvalue(), (16, 20),
                              photometric=photometric)
    pixels = read_image(path).pixels
    assert pixels.shape == rgb.shape and pixels.dtype == np.uint8
    tolerance = 8 if irreversible else 0
    assert np.abs(pixels.astype(int) - rgb).max() <= tolerance


def test_jpeg2000_colour_transform_outside_jpeg2000_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.zeros((16, 20, 3), np.uint8), "RGB")
    ds = dcmread(path)
    ds.PhotometricInterpretation = "YBR_ICT"
    ds.save_as(path)
    with pytest.raises(InputError, match="'YBR_ICT' is for JPEG 2000 pixel data only, not "
                                         "Explicit VR Little Endian"):
        read_image(path)


def as_big_endian(path: Path, pixel_data: bytes | None = None) -> Path:
    """The file rewritten in Explicit VR Big Endian; OB/OW values keep their bytes (pydicom
    leaves them as they are), so words in them must be given big-endian already."""
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    if pixel_data is not None:
        ds.PixelData = pixel_data
    big = path.with_name(f"{path.stem}_expb.dcm")
    dcmwrite(big, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    return big


def test_big_endian_palette_reads_as_its_little_endian_twin(tmp_path: Path) -> None:
    # pydicom 3.0.2 reads 16-bit LUT data in the machine's byte order: a big-endian file's
    # palette came out byte-swapped (OBXXXX1A_expb.dcm reached the model 256 times too dark).
    lut = np.arange(256, dtype=np.uint16) << 8  # 16-bit entries, as OBXXXX1A.dcm has them
    indices = np.tile(np.array([[0, 1, 2], [10, 100, 255]], np.uint8), (8, 6))
    twins = []
    for order in ("<u2", ">u2"):
        path = write_dicom(
            tmp_path / f"{order[0] == '<'}.dcm", indices, "PALETTE COLOR",
            RedPaletteColorLookupTableDescriptor=[256, 0, 16],
            GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
            BluePaletteColorLookupTableDescriptor=[256, 0, 16],
            RedPaletteColorLookupTableData=lut.astype(order).tobytes(),
            GreenPaletteColorLookupTableData=(65280 - lut).astype(order).tobytes(),
            BluePaletteColorLookupTableData=np.full(256, 7 << 8, order).tobytes())
        twins.append(read_image(path if order[0] == "<" else as_big_endian(path)).pixels)
    little, big = twins
    assert big.dtype == np.uint16
    np.testing.assert_array_equal(big, little)
    np.testing.assert_array_equal(big[..., 0], indices.astype(np.uint16) << 8)
    np.testing.assert_array_equal(big[..., 1], 65280 - (indices.astype(np.uint16) << 8))
    assert (big[..., 2] == 7 << 8).all()


def test_big_endian_16bit_rgb_reads_as_its_little_endian_twin(tmp_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 65536, (16, 20, 3), dtype=np.uint16)
    little = write_dicom(tmp_path / "a.dcm", rgb, "RGB", bits_stored=16)
    big = read_image(as_big_endian(little, rgb.astype(">u2").tobytes())).pixels
    assert big.dtype == np.uint16  # in the machine's byte order, as every image is
    np.testing.assert_array_equal(big, rgb)
    np.testing.assert_array_equal(big, read_image(little).pixels)


def test_frame_count_from_the_header(tmp_path: Path) -> None:
    cine = write_dicom(tmp_path / "cine.dcm", np.stack([GREY8] * 3))
    assert dicom_frame_count(cine) == 3
    assert dicom_frame_count(write_dicom(tmp_path / "one.dcm", GREY8)) == 1


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
    frames = np.random.default_rng(2).integers(0, 256, (3, 16, 18, 3), dtype=np.uint8)
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
    # JPEG Lossless has no decoder in the core (docs/dicom.md says why).
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    path = write_encapsulated(tmp_path / "a.dcm", JPEGLosslessSV1, b"\xff\xd8" + b"\0" * 64,
                              (8, 8), photometric="RGB")
    with pytest.raises(InputError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: JPEG Lossless") and "\n" not in message
    assert "decoder plugin that is not installed" in message
    # the packages as pip knows them: GDCM's is python-gdcm, not gdcm
    assert "pylibjpeg-libjpeg" in message and "python-gdcm" in message


def test_video_transfer_syntax_is_refused(tmp_path: Path) -> None:
    path = write_encapsulated(tmp_path / "a.dcm", MPEG4HP41, b"\0" * 64, (8, 8))
    with pytest.raises(InputError, match="not supported"):
        iter_frames(path)  # refused on call, before any frame is asked for


# --- the pixel budget, from the header before any pixel data is read --------------------------

def write_header_only(path: Path, syntax: str, rows: int, columns: int, frames: int = 1) -> Path:
    """A DICOM file whose header says `rows` x `columns` (x `frames`) but which holds only a
    few bytes of pixel data: reading it would take the decoder's full allocation, then fail."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = bytes(16)
    else:
        ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [RLELossless, ExplicitVRLittleEndian])
def test_an_11000_x_11000_dicom_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str) -> None:
    path = write_header_only(tmp_path / "huge.dcm", syntax, 11_000, 11_000)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded pixel data over the budget")

    monkeypatch.setattr("sonocad.io.dicom.iter_pixels", never)
    peak = traced_peak_of_refusals(path, "11000 x 11000")
    assert peak < 2_000_000  # one decoded frame would be 121 MB


def test_the_budget_is_per_frame_not_per_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.stack([GREY8, GREY8 // 2, 255 - GREY8])
    path = write_dicom(tmp_path / "cine.dcm", frames)
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 16 * 16)  # one frame: 3 frames are over
    assert len(list(iter_frames(path))) == 3
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 16 * 16 - 1)
    with pytest.raises(InputError, match=r"image too large \(16 x 16 pixels"):
        iter_frames(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_frames_are_decoded_one_at_a_time(tmp_path: Path, compressed: bool) -> None:
    frames = np.random.default_rng(3).integers(0, 256, (40, 256, 256), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(frames, "MONOCHROME2", 8)
    if compressed:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_image(path).pixels, frames[0])  # imports done here
    tracemalloc.start()
    try:
        read_image(path)
        first_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        count = 0
        for frame in iter_frames(path):
            assert np.array_equal(frame.pixels, frames[count])
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 40
    # a few frames' worth at a time (as much for 10 frames as for 160), never all 40
    assert first_peak < 10 * frames[0].nbytes and peak < 20 * frames[0].nbytes


@pytest.mark.parametrize("shape", [(1, 1), (3, 5000), (5000, 3), (200, 15)])
def test_dicom_too_small_for_a_scan_is_refused(tmp_path: Path, shape: tuple[int, int]) -> None:
    path = write_dicom(tmp_path / "tiny.dcm", np.zeros(shape, np.uint8))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (f"{path}: image too small for an ultrasound frame "
                                 f"({shape[1]} x {shape[0]} pixels; each side must be at least "
                                 "16)")


def test_dicom_without_an_image_size_is_refused(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "a.dcm", ExplicitVRLittleEndian, 16, 16)
    ds = dcmread(path)
    del ds.Rows
    ds.save_as(path)
    with pytest.raises(InputError, match=r"no image size \(Rows, Columns\)"):
        read_image(path)


def test_dicom_errors_are_one_line(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", GREY8)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-20])
    garbage = write_encapsulated(tmp_path / "garbage.dcm", JPEGBaseline8Bit,
                                 b"\xff\xd8" + bytes(64),
                                 (16, 16))
    for path in (truncated, garbage, write_dicom(tmp_path / "empty.dcm", None)):
        with pytest.raises(InputError) as caught:
            list(iter_frames(path))
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{path}: ")
