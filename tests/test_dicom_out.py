"""predict --dicom-out: a DICOM SEG and SR for a synthetic ultrasound DICOM, read back with
pydicom and highdicom: references, frame of reference, masks, codes, values, patient data."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SegmentationStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from sonocad import __version__
from sonocad.errors import InputError
from sonocad.visual import PREDICTION_COLOUR
from sonocad.workflows.dicom_out import write_dicom_results

ROWS, COLUMNS = 23, 31  # frames of 713 bits: BINARY frames are not byte-aligned
PATIENT = {"PatientName": "Doe^Jäne", "PatientID": "PID-4711", "PatientBirthDate": "19700101",
           "PatientSex": "F", "PatientAge": "054Y"}
STUDY = {"StudyDate": "20240102", "StudyTime": "101500", "AccessionNumber": "ACC-0815",
         "StudyID": "ST-1", "ReferringPhysicianName": "Who^Doctor",
         "StudyDescription": "US breast left"}
# Not patient or study data: none of it may reach an output.
OTHER = {"InstitutionName": "Saint Elsewhere", "InstitutionAddress": "1 Main Street",
         "StationName": "US-ROOM-3", "OperatorsName": "Sono^Grapher",
         "Manufacturer": "ACME Ultrasound", "ManufacturerModelName": "Sono 9",
         "DeviceSerialNumber": "SN-123", "SeriesDescription": "Breast L", "SeriesNumber": 3,
         "InstanceNumber": 7, "ContentDate": "20240103", "ContentTime": "101600",
         "BodyPartExamined": "BREAST", "ImageComments": "palpable lump"}
SECRET = "private-secret"
# highdicom copies the Patient, General Study and Patient Study modules and the character set
# they are in, and nothing else; the SEG keeps the source's frame of reference. (Group 0028,
# the pixel description, is the SEG's own and left out of the comparison.)
COPIED = {*PATIENT, *STUDY, "StudyInstanceUID", "SpecificCharacterSet"}
COPIED_INTO_SEG = COPIED | {"FrameOfReferenceUID"}
Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def write_source(path: Path, frames: int = 1, spacing: str | None = "regions",
                 **elements: object) -> Path:
    """An uncompressed ultrasound DICOM as a scanner writes it: patient, study, equipment, a
    private tag, spacing as PixelSpacing or calibrated regions (0.1 x 0.2 mm) or none."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SpecificCharacterSet = "US", "ISO_IR 192"  # UTF-8
    for keyword, value in {**PATIENT, **STUDY, **OTHER}.items():
        setattr(ds, keyword, value)
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", SECRET)
    if spacing == "pixel":
        ds.PixelSpacing = [0.1, 0.2]
    elif spacing == "regions":
        ds.SequenceOfUltrasoundRegions = [_region(delta_x_cm=0.02, delta_y_cm=0.01)]
    pixels = np.zeros((frames, ROWS, COLUMNS) if frames > 1 else (ROWS, COLUMNS), np.uint8)
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    for keyword, value in elements.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _region(delta_x_cm: float, delta_y_cm: float) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = delta_x_cm, delta_y_cm
    return region


def lesion_masks(frames: int) -> list[np.ndarray]:
    """A different mask per frame, the last one empty (a frame without a lesion)."""
    masks = [np.zeros((ROWS, COLUMNS), bool) for _ in range(frames)]
    for number, mask in enumerate(masks[:-1] if frames > 1 else masks):
        mask[2 + number:8 + number, 3:12 + 2 * number] = True
    return masks


def lesion(number: int = 1, *, mm: bool = True) -> dict[str, object]:
    """One entry of the table's ``lesions`` column (`sonocad.measure.Lesion.record`)."""
    return {"number": number, "area_px": 54, "area_mm2": 1.08 if mm else None,
            "diameter_px": 10.3, "diameter_mm": 1.9 if mm else None, "perpendicular_px": 6.0,
            "perpendicular_mm": 1.2 if mm else None, "box": [3, 2, 12, 8],
            "mean_probability": 0.9}


def finding(frame: int | None, *, mm: bool = True, lesions: int = 1,
            **changes: object) -> dict[str, object]:
    """A predictions-table row as `predict` writes it."""
    row: dict[str, object] = {
        "image_id": "case", "frame": frame, "prob_benign": 0.15, "prob_malignant": 0.8,
        "prob_normal": 0.05, "predicted_class": "malignant", "final_class": "malignant",
        "decision_reason": "", "uncertainty": 0.35, "low_confidence": 1,
        "lesion_detected": int(lesions > 0), "lesion_count": lesions,
        "lesions": json.dumps([lesion(n, mm=mm) for n in range(1, lesions + 1)])}
    row.update(changes)
    return row


def write(tmp_path: Path, frames: int = 1, spacing: str | None = "regions",
          rows: list[dict[str, object]] | None = None,
          **elements: object) -> tuple[Dataset, Path, Path]:
    source = write_source(tmp_path / "case.dcm", frames, spacing, **elements)
    if rows is None:
        rows = [finding(None if frames == 1 else n, mm=spacing is not None)
                for n in range(1, frames + 1)]
    seg_path, sr_path = write_dicom_results(source, lesion_masks(frames), rows,
                                            tmp_path / "out", "case")
    return dcmread(source), seg_path, sr_path


def walk(dataset: Dataset) -> Iterator[tuple[str, object]]:
    """(keyword, value) of every element, sequences included."""
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)
        else:
            yield element.keyword, element.value


def shared_top_level(output: Dataset, source: Dataset) -> set[str]:
    """Keywords the output has at its top level with the source's value."""
    return {element.keyword for element in output
            if element.tag.group not in (0x0002, 0x0028) and element.tag in source
            and source[element.tag].value == element.value}


def measurement_groups(sr_path: Path) -> list[Group]:
    """The planar ROI measurement groups of a TID 1500 SR, one per frame."""
    return hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()


def only(items: list) -> object:
    assert len(items) == 1, items
    return items[0]


# --- the Segmentation ------------------------------------------------------------------------

def test_writes_both_files_atomically_named(tmp_path: Path) -> None:
    _, seg_path, sr_path = write(tmp_path)
    assert (seg_path.name, sr_path.name) == ("case_seg.dcm", "case_sr.dcm")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_seg.dcm", "case_sr.dcm"]


def test_seg_of_a_single_frame_references_the_source(tmp_path: Path) -> None:
    source, seg_path, _ = write(tmp_path)
    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    series = only(list(seg.ReferencedSeriesSequence))
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    instance = only(list(series.ReferencedInstanceSequence))
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
        UltrasoundImageStorage, source.SOPInstanceUID)
    assert int(seg.NumberOfFrames) == 1
    derivation = only(list(seg.PerFrameFunctionalGroupsSequence)).DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), lesion_masks(1)[0])


def test_seg_of_a_cine_loop_has_one_frame_per_source_frame(tmp_path: Path) -> None:
    source, seg_path, _ = write(tmp_path, frames=3, spacing="pixel")
    seg = hd.seg.segread(seg_path)
    assert int(seg.NumberOfFrames) == 3
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID,
                reference.ReferencedFrameNumber) == (
            UltrasoundMultiFrameImageStorage, source.SOPInstanceUID, number)
    pixels = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3],
                                            segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), np.stack(lesion_masks(3)))
    np.testing.assert_array_equal(dcmread(seg_path).pixel_array.astype(bool),
                                  np.stack(lesion_masks(3)))
    # The single-frame stand-in highdicom built the first frame against is gone.
    assert UltrasoundImageStorage not in [value for _, value in walk(dcmread(seg_path))]


def test_segment_is_a_lesion_found_by_sonocad(tmp_path: Path) -> None:
    _, seg_path, _ = write(tmp_path)
    segment = only(list(hd.seg.segread(seg_path).SegmentSequence))
    assert segment.segment_number == 1 and segment.segment_label == "lesion"
    assert segment.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert segment.segmented_property_type == codes.SCT.Mass
    assert segment.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    algorithm = segment.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("sonocad", __version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == (
        codes.DCM.ArtificialIntelligence.value)


def test_series_are_named_and_the_lesion_has_the_overlays_colour(tmp_path: Path) -> None:
    _, seg_path, sr_path = write(tmp_path)
    seg, sr = hd.seg.segread(seg_path), dcmread(sr_path)
    assert seg.SeriesDescription == "sonocad lesion segmentation"
    assert sr.SeriesDescription == "sonocad findings"
    segment = only(list(seg.SegmentSequence))
    assert segment.RecommendedDisplayCIELabValue == list(
        hd.color.CIELabColor.from_rgb(*PREDICTION_COLOUR).value)


def test_seg_leaves_out_pixel_measures_without_a_slice_thickness(tmp_path: Path) -> None:
    # PixelSpacing alone is not a valid Pixel Measures item in a SEG with a frame of reference.
    _, seg_path, _ = write(tmp_path, spacing="pixel")
    shared = dcmread(seg_path).SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in shared


def test_seg_keeps_complete_pixel_measures_of_the_source(tmp_path: Path) -> None:
    _, seg_path, _ = write(tmp_path, spacing="pixel", SliceThickness=0.5)
    measures = hd.seg.segread(seg_path).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert (list(measures[0].PixelSpacing), measures[0].SliceThickness) == ([0.1, 0.2], 0.5)


def test_seg_of_a_cine_loop_without_frame_of_reference(tmp_path: Path) -> None:
    source, seg_path, _ = write(tmp_path, frames=3, FrameOfReferenceUID=None)
    seg = hd.seg.segread(seg_path)
    assert "FrameOfReferenceUID" not in seg
    pixels = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3],
                                            segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), np.stack(lesion_masks(3)))


# --- the Structured Report -------------------------------------------------------------------

def test_sr_holds_the_findings(tmp_path: Path) -> None:
    _, _, sr_path = write(tmp_path)
    group = only(measurement_groups(sr_path))
    values = {(m.name.value, m.unit.value): m.value for m in group.get_measurements()}
    assert values == pytest.approx({
        ("prob_benign", "1"): 0.15, (codes.DCM.ProbabilityOfCancer.value, "1"): 0.8,
        ("prob_normal", "1"): 0.05, (codes.SCT.Area.value, "mm2"): 1.08,
        (codes.SCT.LongAxis.value, "mm"): 1.9, (codes.SCT.ShortAxis.value, "mm"): 1.2,
        ("uncertainty", "1"): 0.35})
    evaluations = {q.name.value: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["final_class"] == codes.SCT.Malignant
    assert evaluations["low_confidence"] == codes.SCT.Yes
    assert group.finding_type == codes.SCT.Mass


def test_sr_references_the_seg_frame_and_the_source_frame(tmp_path: Path) -> None:
    source, seg_path, sr_path = write(tmp_path, frames=3, spacing="pixel")
    seg = dcmread(seg_path)
    groups = measurement_groups(sr_path)
    assert len(groups) == 3
    for number, group in enumerate(groups, start=1):
        assert group.reference_type == codes.DCM.ReferencedSegmentationFrame
        segment_item, source_item = group.referenced_segmentation_frame
        assert segment_item.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment_item.referenced_frame_numbers == [number]
        assert segment_item.referenced_segment_numbers is None  # the frame names the segment
        assert source_item.referenced_sop_instance_uid == source.SOPInstanceUID
        assert source_item.referenced_frame_numbers == [number]
    evidence = {item.ReferencedSOPInstanceUID for study in
                dcmread(sr_path).CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}


def test_sr_gives_sizes_in_pixels_without_spacing(tmp_path: Path) -> None:
    _, _, sr_path = write(tmp_path, spacing=None)
    group = only(measurement_groups(sr_path))
    sizes = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()
             if m.name in (codes.SCT.Area, codes.SCT.LongAxis, codes.SCT.ShortAxis)}
    assert sizes == {codes.SCT.Area.value: (54.0, "{pixels}"),
                     codes.SCT.LongAxis.value: (pytest.approx(10.3), "{pixels}"),
                     codes.SCT.ShortAxis.value: (6.0, "{pixels}")}


def test_sr_has_one_finding_per_lesion(tmp_path: Path) -> None:
    source, seg_path, sr_path = write(tmp_path, rows=[finding(None, lesions=2)])
    groups = measurement_groups(sr_path)
    assert [g.tracking_identifier for g in groups] == ["lesion 1, frame 1", "lesion 2, frame 1"]
    for group in groups:
        axes = [m for m in group.get_measurements() if m.name == codes.SCT.LongAxis]
        assert only(axes).value == pytest.approx(1.9)


def test_sr_leaves_out_what_is_unknown(tmp_path: Path) -> None:
    # A model without a decision rule, and a frame without a lesion (diameter NaN).
    row = finding(None, final_class=None, uncertainty=None, low_confidence=None, lesions=0,
                  prob_normal=0.9, prob_malignant=0.05, prob_benign=0.05,
                  predicted_class="normal")
    _, _, sr_path = write(tmp_path, rows=[row])
    group = only(measurement_groups(sr_path))
    assert group.tracking_identifier == "no lesion, frame 1"
    names = {m.name.value for m in group.get_measurements()}
    assert names == {"prob_benign", codes.DCM.ProbabilityOfCancer.value, "prob_normal"}
    evaluations = {q.name.value: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["final_class"] == codes.SCT.Normal  # the argmax where no rule decides
    assert "low_confidence" not in evaluations


def test_sr_codes_a_class_the_standard_has_no_code_for_in_sonocads_scheme(
        tmp_path: Path) -> None:
    row = finding(None, final_class="fibroadenoma", prob_fibroadenoma=0.6)
    _, _, sr_path = write(tmp_path, rows=[row])
    group = only(measurement_groups(sr_path))
    evaluations = {q.name.value: q.value for q in group.get_qualitative_evaluations()}
    assert (evaluations["final_class"].value, evaluations["final_class"].scheme_designator) == (
        "fibroadenoma", "99SONOCAD")
    probability = only(group.get_measurements(name=hd.sr.CodedConcept(
        "prob_fibroadenoma", "99SONOCAD", "Probability of fibroadenoma")))
    assert probability.value == pytest.approx(0.6)
    declared = dcmread(sr_path).CodingSchemeIdentificationSequence
    assert [item.CodingSchemeDesignator for item in declared] == ["99SONOCAD"]


# --- patient data and identity ---------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 3])
def test_outputs_carry_the_patient_and_study_modules_and_nothing_else(
        tmp_path: Path, frames: int) -> None:
    source, seg_path, sr_path = write(tmp_path, frames=frames)
    seg, sr = dcmread(seg_path), dcmread(sr_path)
    assert shared_top_level(seg, source) == COPIED_INTO_SEG
    assert shared_top_level(sr, source) == COPIED
    other = {value for value in OTHER.values() if isinstance(value, str)}  # 3, 7: frame numbers
    for output in (seg, sr):
        values = {str(value) for _, value in walk(output)}  # nested items too
        assert not values & other, "equipment, institution or series data leaked"
        assert SECRET not in values
        assert not any(element.tag.is_private for element in output)


def test_outputs_are_new_instances_in_new_series(tmp_path: Path) -> None:
    source, seg_path, sr_path = write(tmp_path)
    seg, sr = dcmread(seg_path), dcmread(sr_path)
    assert len({source.SeriesInstanceUID, seg.SeriesInstanceUID, sr.SeriesInstanceUID}) == 3
    assert len({source.SOPInstanceUID, seg.SOPInstanceUID, sr.SOPInstanceUID}) == 3
    assert (seg.Modality, sr.Modality) == ("SEG", "SR")
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID


def test_odd_patient_values_are_copied_without_being_echoed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # highdicom warns about a one-part name, and logs it, quoting it; so would pydicom an
    # overlong ID.
    with warnings.catch_warnings():  # pydicom warns, writing the file, as it would reading it
        warnings.simplefilter("ignore")
        source = write_source(tmp_path / "case.dcm", PatientName="Smith", PatientID="X" * 70)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg_path, sr_path = write_dicom_results(source, lesion_masks(1), [finding(None)],
                                                tmp_path / "out", "case")
    assert "Smith" not in caplog.text and "XXXX" not in caplog.text
    with warnings.catch_warnings():  # pydicom warns reading the overlong ID back
        warnings.simplefilter("ignore")
        for output in (dcmread(seg_path), dcmread(sr_path)):
            assert (output.PatientName, output.PatientID) == ("Smith", "X" * 70)


def test_a_patient_value_highdicom_cannot_parse_is_named_not_quoted(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Invalid value"):
        source = write_source(tmp_path / "case.dcm", PatientBirthDate="1970-13-45")
    with pytest.raises(InputError, match="PatientBirthDate is not a valid DICOM DA") as caught:
        write_dicom_results(source, lesion_masks(1), [finding(None)], tmp_path / "out", "case")
    assert "1970" not in str(caught.value)


# --- sources that cannot take derived objects ------------------------------------------------

@pytest.mark.parametrize(("elements", "reason"), [
    ({"SOPInstanceUID": None}, "no SOPInstanceUID"),
    ({"StudyInstanceUID": None}, "no StudyInstanceUID"),
    ({"Rows": None, "Columns": None}, "not an image"),
    # The retired class has its successor's name: the UID tells them apart.
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6"},
     "Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6) is a retired SOP class"),
    ({"SOPClassUID": "1.2.826.0.1.3680043.9.9999.1"},
     "1.2.826.0.1.3680043.9.9999.1 is a private SOP class"),
])
def test_a_source_that_cannot_be_referenced_is_one_input_error(
        tmp_path: Path, elements: dict[str, object], reason: str) -> None:
    source = write_source(tmp_path / "case.dcm", **elements)
    with pytest.raises(InputError) as caught:
        write_dicom_results(source, lesion_masks(1), [finding(None)], tmp_path / "out", "case")
    message = str(caught.value)
    assert "\n" not in message and reason in message
    assert "Doe" not in message and "PID-4711" not in message
    assert not (tmp_path / "out").exists()


def test_a_single_frame_class_holding_frames_is_refused(tmp_path: Path) -> None:
    # Invalid (dciodvfy: NumberOfFrames may only be 1 there), and its frames could be
    # referenced only by numbers that the class does not allow.
    source = write_source(tmp_path / "case.dcm", frames=2, SOPClassUID=UltrasoundImageStorage)
    with pytest.raises(InputError, match=r"Ultrasound Image Storage \(1.2.840.10008.5.1.4.1.1.6.1\)"
                                         r" is a single-frame SOP class, but the file holds 2 "
                                         "frames"):
        write_dicom_results(source, lesion_masks(2), [finding(1), finding(2)],
                            tmp_path / "out", "case")
    assert not (tmp_path / "out").exists()


def test_not_a_dicom_file_is_an_input_error(tmp_path: Path) -> None:
    source = tmp_path / "case.dcm"
    source.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="not a DICOM file"):
        write_dicom_results(source, lesion_masks(1), [finding(None)], tmp_path / "out", "case")


def test_masks_must_match_the_frames(tmp_path: Path) -> None:
    source = write_source(tmp_path / "case.dcm", frames=3)
    with pytest.raises(ValueError, match="2 masks"):
        write_dicom_results(source, lesion_masks(3)[:2], [finding(1), finding(2)],
                            tmp_path / "out", "case")
