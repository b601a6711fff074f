"""Real DICOM files: every ultrasound file in pydicom-data (scanner files: ALOKA, JPEG 2000,
palette colour in both byte orders, cine loops) and among pydicom's own test files, through
`sonocad predict --dicom-out` in one call. Each is read, or refused in one line naming it as
docs/dicom.md says; its spacing is the one its own calibrated regions give; its SEG and SR read
back with highdicom, reference it as its SOP class allows, and add no patient data; where
Debian's dicom3tools is installed, dciodvfy finds no error in them that it does not find in the
file they came from."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    EnhancedUSVolumeStorage,
    JPEGLosslessSV1,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from sonocad.cli import main
from sonocad.io.images import read_image
from sonocad.workflows import predict as predict_module

data_store = pytest.importorskip(
    "data_store", reason="pydicom-data is not installed (pip install -e '.[test]'): it holds "
                         "the real DICOM files")
pytestmark = pytest.mark.slow

ULTRASOUND_CLASSES = {UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
                      EnhancedUSVolumeStorage,
                      "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"}  # retired
_SAME_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
# Read, but no SEG/SR can be derived (docs/dicom.md, "When it cannot be done"): why, as the
# one line says it.
NO_DICOM_OUT = {
    "color-pl.dcm": "Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6) is a retired SOP "
                    "class",
    "color-px.dcm": "Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6) is a retired SOP "
                    "class",
    "OBXXXX1A_2frame.dcm": f"Ultrasound Image Storage ({_SAME_CLASS}) is a single-frame SOP "
                           "class, but the file holds 2 frames",
    "OBXXXX1A_expb_2frame.dcm": f"Ultrasound Image Storage ({_SAME_CLASS}) is a single-frame "
                                "SOP class, but the file holds 2 frames",
    "ExplVR_BigEnd.dcm": "StudyTime is not a valid DICOM TM value",  # '14:04:38', ACR-NEMA's
}
# Not read where its decoder is not installed (the core has none: docs/dicom.md says why).
NEEDS_DECODER = {"JPGLosslessP14SV1_1s_1f_8b.dcm": JPEGLosslessSV1}
# Patient-identifying attributes: an output may hold one only as its source does (or empty,
# where the standard asks for it).
PATIENT_DATA = ("PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs",
                "OtherPatientNames", "OtherPatientIDsSequence", "PatientBirthDate",
                "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize", "PatientWeight",
                "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
                "MilitaryRank", "EthnicGroup", "PatientComments", "AccessionNumber",
                "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime",
                "StudyDescription", "InstitutionName", "InstitutionAddress",
                "InstitutionalDepartmentName", "StationName", "OperatorsName",
                "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
                "RequestingPhysician")
CENTIMETRES = 3  # PhysicalUnitsX/YDirection


def ultrasound_files() -> list[Path]:
    """Every ultrasound file of pydicom-data and of pydicom's own test files, by SOP class or
    modality, one per name. Not pydicom.data.get_testdata_files(): it downloads what
    pydicom-data lacks."""
    folders = [data_store.DataStore().data_path,
               Path(pydicom.data.__file__).parent / "test_files"]
    found: dict[str, Path] = {}
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "Modality"])
        except InvalidDicomError:
            continue  # not DICOM part 10 (a README, a JSON, a dump)
        if ds.get("SOPClassUID") in ULTRASOUND_CLASSES or ds.get("Modality") == "US":
            found.setdefault(path.name, path)
    return list(found.values())


FILES = ultrasound_files()
BY_NAME = {path.name: path for path in FILES}


@dataclass(frozen=True)
class Run:
    out: Path
    code: int
    stderr: list[str]
    rows: dict[str, list[dict[str, str]]]  # predictions.csv rows by input file name
    progress: list[tuple[str, int | None]]  # each progress's description and total


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """All the files in one `predict` (one model load, one batch stream): the bundled model,
    the table only (no pictures), SEG and SR."""
    out = tmp_path_factory.mktemp("corpus") / "out"
    shown: list[tuple[str, int | None]] = []
    real_progress = predict_module.progress

    def recorded(items: Any, description: str, total: int | None = None, **options: Any) -> Any:
        shown.append((description, total))
        return real_progress(items, description, total, **options)

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(predict_module, "progress", recorded)
        code = main(["predict", *map(str, FILES), "--out", str(out), "--dicom-out",
                     "--outputs", "table"])
    rows: dict[str, list[dict[str, str]]] = {}
    with open(out / "predictions.csv", newline="", encoding="utf-8") as table:
        for row in csv.DictReader(table):
            rows.setdefault(Path(row["file"]).name, []).append(row)
    return Run(out, code, stderr.getvalue().splitlines(), rows, shown)


def header(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, stop_before_pixels=True)


def frame_count(path: Path) -> int:
    return int(header(path).get("NumberOfFrames") or 1)


def unreadable_reason(path: Path) -> str | None:
    syntax = NEEDS_DECODER.get(path.name)
    if syntax is not None and not get_decoder(syntax).is_available:
        return "pixel data needs a decoder plugin that is not installed (any of: "
    return None


def lines_naming(run: Run, path: Path) -> list[str]:
    return [line for line in run.stderr if str(path) in line]


def outputs(run: Run, path: Path) -> tuple[Path, Path]:
    stem = run.rows[path.name][0]["output_name"].removesuffix("_frame001")
    return run.out / "dicom" / f"{stem}_seg.dcm", run.out / "dicom" / f"{stem}_sr.dcm"


def derived(path: Path) -> bool:
    return unreadable_reason(path) is None and path.name not in NO_DICOM_OUT


def walk(dataset: Dataset) -> Iterator[Dataset]:
    """The dataset and every sequence item in it."""
    yield dataset
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)


def region_spacing_mm(source: Dataset) -> tuple[float, float] | None:
    """(row, column) mm per pixel from the file's calibrated regions (cm in both directions),
    where they all agree; None where there are none or they disagree."""
    found = {(abs(float(region.PhysicalDeltaY)) * 10, abs(float(region.PhysicalDeltaX)) * 10)
             for region in source.get("SequenceOfUltrasoundRegions", [])
             if region.get("PhysicalUnitsXDirection") == CENTIMETRES
             and region.get("PhysicalUnitsYDirection") == CENTIMETRES
             and region.get("PhysicalDeltaX") and region.get("PhysicalDeltaY")}
    return found.pop() if len(found) == 1 else None


def dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                          errors="replace", timeout=120, check=False)
    return {line.strip() for line in (done.stdout + done.stderr).splitlines()
            if line.startswith("Error")}


# --- the corpus itself -------------------------------------------------------------------------

def test_the_corpus_holds_the_scanner_files_the_issues_name() -> None:
    assert {"US1_J2KR.dcm", "US1_J2KI.dcm", "US1_UNCR.dcm", "OBXXXX1A.dcm",
            "OBXXXX1A_expb.dcm", "gdcm-US-ALOKA-16.dcm", "color3d_jpeg_baseline.dcm",
            "JPGLosslessP14SV1_1s_1f_8b.dcm"} <= set(BY_NAME)
    assert set(NO_DICOM_OUT) | set(NEEDS_DECODER) <= set(BY_NAME)


def test_the_run_fails_only_for_the_documented_files(run: Run) -> None:
    failing = {path.name for path in FILES if not derived(path)}
    assert run.code == (1 if failing else 0)
    assert run.stderr[-1] == f"sonocad: {len(failing)} input(s) failed (listed above)"


# --- each file ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_each_file_is_read_or_refused_in_one_line(run: Run, path: Path) -> None:
    lines = lines_naming(run, path)
    reason = unreadable_reason(path)
    if reason is not None:
        assert len(lines) == 1 and lines[0].startswith(f"sonocad: skipped {path}: ")
        assert reason in lines[0]
        assert path.name not in run.rows
        return
    assert len(run.rows[path.name]) == frame_count(path)
    seg, sr = outputs(run, path)
    if path.name in NO_DICOM_OUT:
        assert lines == [f"sonocad: skipped {path}: cannot derive DICOM SEG/SR: "
                         f"{NO_DICOM_OUT[path.name]}"]
        assert not seg.exists() and not sr.exists()
    else:
        assert lines == []
        assert seg.exists() and sr.exists()


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_spacing_is_the_one_the_files_own_regions_give(run: Run, path: Path) -> None:
    if path.name not in run.rows:
        pytest.skip("not read here")
    source = header(path)
    expected = region_spacing_mm(source)
    if expected is None and "SequenceOfUltrasoundRegions" in source:
        pytest.skip("its calibrated regions disagree: no one spacing to check")
    for row in run.rows[path.name]:
        if expected is None:
            assert (row["spacing_mm"], row["spacing_source"]) == ("", "")
        else:
            row_mm, column_mm = expected
            assert row_mm == pytest.approx(column_mm)  # square pixels in this corpus
            assert float(row["spacing_mm"]) == pytest.approx(row_mm, rel=1e-6)
            assert row["spacing_source"] == "dicom"


@pytest.mark.parametrize("path", [p for p in FILES if derived(p)], ids=lambda p: p.name)
def test_seg_and_sr_read_back_and_reference_the_source(run: Run, path: Path) -> None:
    source = header(path)
    seg_path, sr_path = outputs(run, path)
    seg, sr = hd.seg.segread(seg_path), hd.sr.srread(sr_path)
    frames = frame_count(path)
    assert int(seg.NumberOfFrames) == frames  # one SEG frame per source frame
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesDescription == "sonocad lesion segmentation"
    assert sr.SeriesDescription == "sonocad findings"
    groups = sr.content.get_planar_roi_measurement_groups()
    lesions = [len(json.loads(row["lesions"] or "[]")) for row in run.rows[path.name]]
    assert len(groups) == sum(max(count, 1) for count in lesions)  # one per lesion, or frame
    for group in groups:
        assert group.referenced_segmentation_frame[0].ReferencedSOPSequence[0] \
            .ReferencedSOPInstanceUID == seg.SOPInstanceUID
    # A source frame is named only where the source's SOP class has frames (dciodvfy).
    single = source.SOPClassUID == UltrasoundImageStorage
    if single:
        masks = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    else:
        masks = seg.get_pixels_by_source_frame(source.SOPInstanceUID, range(1, frames + 1),
                                               segment_numbers=[1])
    assert masks.shape[:3] == (frames, source.Rows, source.Columns)
    for output in (dcmread(seg_path), dcmread(sr_path)):
        references = [item for item in walk(output)
                      if item.get("ReferencedSOPInstanceUID") == source.SOPInstanceUID]
        numbers = {int(number) for item in references
                   for number in np.ravel(item.get("ReferencedFrameNumber", []))}
        assert references and numbers == (set() if single else set(range(1, frames + 1)))


@pytest.mark.parametrize("path", [p for p in FILES if derived(p)], ids=lambda p: p.name)
def test_seg_and_sr_add_no_patient_data(run: Run, path: Path) -> None:
    source = header(path)
    for output_path in outputs(run, path):
        output = dcmread(output_path)
        assert not any(element.tag.is_private for item in walk(output) for element in item)
        for item in walk(output):
            for keyword in PATIENT_DATA:
                value = item.get(keyword)
                if value not in (None, "", []):
                    assert source.get(keyword) == value, f"{output_path.name}: {keyword}"


@pytest.mark.parametrize("path", [p for p in FILES if derived(p)], ids=lambda p: p.name)
def test_dciodvfy_finds_no_error_the_source_does_not_have(run: Run, path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed")
    inherited = dciodvfy_errors(path)
    for output in outputs(run, path):
        assert dciodvfy_errors(output) - inherited == set(), output.name


# --- what the issue named ----------------------------------------------------------------------

@pytest.mark.parametrize(("compressed", "uncompressed"), [("US1_J2KR.dcm", "US1_UNCR.dcm"),
                                                          ("US1_J2KI.dcm", "US1_UNCI.dcm")])
def test_jpeg2000_colour_transforms_read_as_their_uncompressed_twins(
        compressed: str, uncompressed: str) -> None:
    np.testing.assert_array_equal(read_image(BY_NAME[compressed]).pixels,
                                  read_image(BY_NAME[uncompressed]).pixels)


@pytest.mark.parametrize("big_endian", ["OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm"])
def test_big_endian_palette_reads_as_its_little_endian_twin(big_endian: str) -> None:
    little = read_image(BY_NAME["OBXXXX1A.dcm"]).pixels
    big = read_image(BY_NAME[big_endian]).pixels
    assert little.max() == 65280  # 8-bit colours in the high byte of 16-bit entries
    np.testing.assert_array_equal(big, little)


def test_a_cine_loop_shows_its_frames_progress(run: Run) -> None:
    cine = BY_NAME["color3d_jpeg_baseline.dcm"]
    assert (f"frames of {cine.name}", 120) in run.progress
