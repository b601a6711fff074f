"""DICOM results for a DICOM input: a Segmentation of the lesion mask and a Structured Report
of the findings, both in the source's study, so that they can go back to the PACS.

* ``<name>_seg.dcm``: a BINARY Segmentation with one segment, "lesion" (category SCT 49755003
  "Morphologically abnormal structure", type SCT 4147007 "Mass", algorithm AUTOMATIC: sonocad,
  its version, family DCM 123110 "Artificial Intelligence"; shown in the overlays' red where a
  viewer takes the recommended colour); one frame per source frame, empty
  frames included, each referencing its source frame; the source's frame of reference, and its
  pixel measures where it has a complete set (spacing and slice thickness).
* ``<name>_sr.dcm``: a Comprehensive SR holding a TID 1500 Measurement Report with one planar
  ROI measurement group per lesion of each frame (one for a frame without a lesion),
  referencing that SEG frame and its source frame: the frame's final class, each class
  probability, the uncertainty score and the low-confidence flag, and the lesion's area, long
  axis (its longest diameter) and short axis (the longest diameter across it), in mm where the
  spacing is known, else in UCUM ``{pixels}``.

Patient and study data: highdicom copies the Patient, General Study, Patient Study and Clinical
Trial modules from the source, as the standard asks of an object in the same study; nothing else
of the source is copied but UIDs for the references. The full header is read only here, and no
value of it is logged, printed or put into an error message.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import struct
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import UID, SecondaryCaptureImageStorage, UltrasoundImageStorage, generate_uid
from pydicom.valuerep import DA, TM

from sonocad import __version__
from sonocad.errors import InputError
from sonocad.io.atomic import write_bytes
from sonocad.visual import PREDICTION_COLOUR

_SOFTWARE = "sonocad"
# A software has no serial number, but Enhanced General Equipment requires one (Type 1).
_SERIAL_NUMBER = __version__
# Derived series sort after the scanner's in a viewer's series list.
_SEG_SERIES_NUMBER, _SR_SERIES_NUMBER = 9001, 9002
_SEG_SERIES, _SR_SERIES = "sonocad lesion segmentation", "sonocad findings"  # the series' names
_SEGMENT_NUMBER = 1
_DEVICE_UID = generate_uid(entropy_srcs=[_SOFTWARE])  # the same observer device in every SR

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
             "Modality")
# Type 2 in the modules highdicom copies: present (empty when unknown) in every derived object.
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
_PARSED = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}
_SEXES = (None, "", "M", "F", "O")
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, AttributeError,
                NotImplementedError, struct.error)

# Concepts the standard has no code for are sonocad's own, in a declared private scheme.
_SCHEME = "99SONOCAD"
_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=_SCHEME, name="sonocad codes", responsible_organization=_SOFTWARE)
_FINAL_CLASS = hd.sr.CodedConcept("final_class", _SCHEME, "sonocad final class")
_LOW_CONFIDENCE = hd.sr.CodedConcept("low_confidence", _SCHEME, "Low confidence")
_UNCERTAINTY = hd.sr.CodedConcept("uncertainty", _SCHEME, "Uncertainty score")
_CLASS_CODES = {"benign": codes.SCT.Benign, "malignant": codes.SCT.Malignant,
                "normal": codes.SCT.Normal}
_CLASS_PROBABILITIES = {"malignant": codes.DCM.ProbabilityOfCancer}
_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")  # UCUM count annotation
_SETTINGS_LOCK = threading.Lock()
# SOP classes without the Multi-frame module: Ultrasound Image Storage, its retired twin, and
# Secondary Capture.
_SINGLE_FRAME_CLASSES = frozenset({UltrasoundImageStorage, "1.2.840.10008.5.1.4.1.1.6",
                                   SecondaryCaptureImageStorage})


def write_dicom_results(source: Path, masks: Sequence[np.ndarray],
                        findings: Sequence[Mapping[str, Any]], out_dir: Path,
                        name: str) -> list[Path]:
    """Write out_dir/<name>_seg.dcm and out_dir/<name>_sr.dcm for the DICOM file `source`;
    masks: one bool (H, W) mask per frame predicted (all frames of the file, in order);
    findings: one row per frame with keys of sonocad's predictions table: final_class (or
    predicted_class), prob_<class> for each class, lesions (the JSON list of
    `sonocad.measure.Lesion.record`), low_confidence (0/1 or None), uncertainty (float or
    None), frame (None or 1-based). Returns the paths written. Raises
    sonocad.errors.InputError(source, "...") with a one-line reason when the source cannot
    take derived objects (e.g. missing SOP Instance UID, not an image)."""
    with _silenced():
        header = _read_source(source)
        _check_predictions(header, masks, findings)
        seg = _segmentation(header, np.stack([np.asarray(m, dtype=bool) for m in masks]))
        report = _structured_report(header, seg, findings)
        for dataset in (seg, report):
            _drop_source_equipment(dataset)
        paths = [out_dir / f"{name}_seg.dcm", out_dir / f"{name}_sr.dcm"]
        for path, dataset in zip(paths, (seg, report)):
            write_bytes(path, _encode(dataset))
    return paths


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """pydicom (validating) and highdicom (a one-part patient name, say) warn about odd values
    by quoting them, and here they are the patient's: while sonocad handles a full header,
    pydicom's validation is off and warnings are dropped. Both settings are process-wide; the
    lock keeps two writers from restoring each other's."""
    settings = config.settings
    with _SETTINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = settings.reading_validation_mode, settings.writing_validation_mode
        settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
        try:
            yield
        finally:
            settings.reading_validation_mode, settings.writing_validation_mode = saved


def _read_source(path: Path) -> Dataset:
    """The source's full header (the patient and study modules are copied from it)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no DICM preamble)") from None
    except _READ_ERRORS as exc:  # the message may quote header values: only its type is shown
        raise InputError(path, f"cannot read the DICOM header ({type(exc).__name__})") from None
    _check_source(path, header)
    _check_parsed_values(path, header)
    for keyword in _TYPE_2:
        header.setdefault(keyword, None)
    return header


def _check_source(path: Path, header: Dataset) -> None:
    missing = [keyword for keyword in _REQUIRED if not header.get(keyword)]
    if missing:
        raise InputError(path, f"cannot derive DICOM SEG/SR: no {', '.join(missing)}")
    if not header.get("Rows") or not header.get("Columns"):
        raise InputError(path, "cannot derive DICOM SEG/SR: not an image (no Rows/Columns)")
    sop_class = UID(header.SOPClassUID)
    kind = ("a private" if sop_class.is_private else "a retired" if sop_class.is_retired
            else "not a" if sop_class.type != "SOP Class" else None)
    if kind is not None:  # highdicom knows the current standard's classes only
        raise InputError(path, f"cannot derive DICOM SEG/SR: {_named(sop_class)} is {kind} "
                               f"SOP class")
    frames = int(header.get("NumberOfFrames") or 1)
    if frames > 1 and sop_class in _SINGLE_FRAME_CLASSES:  # a frame could not be referenced
        raise InputError(path, f"cannot derive DICOM SEG/SR: {_named(sop_class)} is a "
                               f"single-frame SOP class, but the file holds {frames} frames")


def _named(uid: UID) -> str:
    """The UID's name and the UID itself: a retired class has its successor's name."""
    return uid if uid.name == uid else f"{uid.name} ({uid})"


def _check_parsed_values(path: Path, header: Dataset) -> None:
    """highdicom parses these and fails on an invalid one with a message quoting it."""
    for keyword, parse in _PARSED.items():
        value = header.get(keyword)
        try:
            if value:
                parse(value)
        except ValueError:
            raise InputError(path, f"cannot derive DICOM SEG/SR: {keyword} is not a valid "
                                   f"DICOM {parse.__name__} value") from None
    if header.get("PatientSex") not in _SEXES:
        raise InputError(path, "cannot derive DICOM SEG/SR: PatientSex is not M, F, O or "
                               "empty")


def _check_predictions(header: Dataset, masks: Sequence[np.ndarray],
                       findings: Sequence[Mapping[str, Any]]) -> None:
    """A mismatch here is the caller's bug, not the file's: ValueError."""
    frames = int(header.get("NumberOfFrames") or 1)
    if not len(masks) == len(findings) == frames:
        raise ValueError(f"{len(masks)} masks and {len(findings)} findings for {frames} frames")
    shape = (int(header.Rows), int(header.Columns))
    if any(np.shape(mask) != shape for mask in masks):
        raise ValueError(f"every mask must be {shape[0]} x {shape[1]}, as the source frames")
    for number, row in enumerate(findings, start=1):
        if row.get("frame") not in (None, number):
            raise ValueError(f"finding {number} is for frame {row['frame']}")


def _segmentation(source: Dataset, masks: np.ndarray) -> hd.seg.Segmentation:
    if not _multi_frame(source):
        return _highdicom_segmentation(_without_frame_count(source), masks[0])
    if "SharedFunctionalGroupsSequence" in source:  # an enhanced image: highdicom knows it
        return _highdicom_segmentation(source, masks)
    return _cine_segmentation(source, masks)


def _multi_frame(source: Dataset) -> bool:
    """Whether references to `source` name a frame: only where its SOP class is a multi-frame
    one, not where a single-frame image merely carries NumberOfFrames 1 (dciodvfy: "Shall not
    be present for Referenced SOP Class that is not multi-frame")."""
    return "NumberOfFrames" in source and source.SOPClassUID not in _SINGLE_FRAME_CLASSES


def _without_frame_count(source: Dataset) -> Dataset:
    if "NumberOfFrames" not in source:
        return source
    single = copy.deepcopy(source)  # a shallow copy shares the element dict
    del single.NumberOfFrames
    return single


def _highdicom_segmentation(source: Dataset, pixels: np.ndarray) -> hd.seg.Segmentation:
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_lesion_segment()], series_instance_uid=hd.UID(),
        series_number=_SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=_SOFTWARE, manufacturer_model_name=_SOFTWARE,
        software_versions=__version__, device_serial_number=_SERIAL_NUMBER,
        content_description="Lesion predicted by sonocad",
        omit_empty_frames=False)  # one SEG frame per source frame, lesion or not
    seg.SeriesDescription = _SEG_SERIES
    _drop_incomplete_pixel_measures(seg)
    _add_patient_orientation(seg, source)
    return seg


def _drop_incomplete_pixel_measures(seg: hd.seg.Segmentation) -> None:
    """highdicom copies the source's PixelSpacing into Pixel Measures, but a SEG with a frame
    of reference needs a slice thickness beside it (PS3.3 C.7.6.16.2.1), which ultrasound
    images rarely record, and highdicom cannot read Pixel Measures back without one. The SEG
    frames are the source frames pixel for pixel (Derivation Image), so the source's
    calibration applies to them anyway."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures is not None and "SliceThickness" not in measures[0]:
        del shared.PixelMeasuresSequence


def _add_patient_orientation(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """Type 2C in General Image where frames have no Plane Orientation (highdicom leaves it
    out); the SEG's rows and columns run as the source's."""
    if "PlaneOrientationSequence" not in seg.SharedFunctionalGroupsSequence[0]:
        seg.PatientOrientation = source.get("PatientOrientation")


def _lesion_segment() -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=_SEGMENT_NUMBER, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=_SOFTWARE, version=__version__, family=codes.DCM.ArtificialIntelligence),
        display_color=hd.color.CIELabColor.from_rgb(*PREDICTION_COLOUR))


def _cine_segmentation(source: Dataset, masks: np.ndarray) -> hd.seg.Segmentation:
    """highdicom derives a SEG from a single-frame or an enhanced multi-frame image, not from
    a multi-frame image without functional groups such as an ultrasound cine loop, even of one
    frame (highdicom issue 284). So the SEG of the first frame is made against a single-frame
    stand-in of the source (the same instance with a single-frame class, whose patient and
    study modules are the same), and then given one frame per source frame, each referencing
    its source frame by number and indexed by its temporal position."""
    stand_in = copy.deepcopy(source)
    stand_in.SOPClassUID = UltrasoundImageStorage
    del stand_in.NumberOfFrames
    seg = _highdicom_segmentation(stand_in, masks[0])
    for reference in _source_references(seg):
        reference.ReferencedSOPClassUID = source.SOPClassUID
    first = seg.PerFrameFunctionalGroupsSequence[0]
    seg.PerFrameFunctionalGroupsSequence = [_cine_frame(first, number)
                                            for number in range(1, len(masks) + 1)]
    organization = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    seg.DimensionIndexSequence.append(_temporal_dimension(organization))
    seg.NumberOfFrames = len(masks)
    seg.PixelData = pack_bits(masks.astype(np.uint8))  # BINARY frames are packed end to end
    return seg


def _source_references(seg: Dataset) -> Iterator[Dataset]:
    """Every item by which a one-frame highdicom SEG references its source instance."""
    for series in seg.ReferencedSeriesSequence:
        yield from series.ReferencedInstanceSequence
    yield from seg.SourceImageSequence
    for derivation in seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence:
        yield from derivation.SourceImageSequence


def _cine_frame(first: Dataset, number: int) -> Dataset:
    item = copy.deepcopy(first)
    item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = number
    content = item.FrameContentSequence[0]
    content.TemporalPositionIndex = number
    content.DimensionIndexValues = [1, number]  # (segment, temporal position)
    return item


def _temporal_dimension(organization_uid: str) -> Dataset:
    dimension = Dataset()
    dimension.DimensionOrganizationUID = organization_uid
    dimension.DimensionIndexPointer = Tag("TemporalPositionIndex")
    dimension.FunctionalGroupPointer = Tag("FrameContentSequence")
    dimension.DimensionDescriptionLabel = "Temporal Position Index"
    return dimension


def _structured_report(source: Dataset, seg: hd.seg.Segmentation,
                       findings: Sequence[Mapping[str, Any]]) -> hd.sr.ComprehensiveSR:
    groups = [_measurement_group(source, seg, frame, row, lesion)
              for frame, row in enumerate(findings, start=1)
              for lesion in (json.loads(row.get("lesions") or "[]") or [None])]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=codes.SCT.UltrasonographyOfBreast, imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source, seg], content=report[0], series_instance_uid=hd.UID(),
        series_number=_SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=_SOFTWARE, manufacturer_model_name=_SOFTWARE,
        software_versions=__version__, device_serial_number=_SERIAL_NUMBER,
        is_complete=True,  # but unverified and preliminary: no one has signed it
        coding_schemes=[_CODING_SCHEME])
    sr.SeriesDescription = _SR_SERIES
    return sr


def _observation_context() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_DEVICE_UID, name=_SOFTWARE, manufacturer_name=_SOFTWARE, model_name=_SOFTWARE)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _measurement_group(source: Dataset, seg: hd.seg.Segmentation, frame: int,
                       row: Mapping[str, Any], lesion: Mapping[str, Any] | None
                       ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The findings of one lesion of a frame (or of a frame without one); SEG frame n is the
    mask of source frame n."""
    name = f"lesion {lesion['number']}, frame {frame}" if lesion else f"no lesion, frame {frame}"
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name),
        referenced_segment=_segment_reference(source, seg, frame),
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_type=codes.SCT.Mass, finding_sites=[hd.sr.FindingSite(codes.SCT.Breast)],
        algorithm_id=hd.sr.AlgorithmIdentification(name=_SOFTWARE, version=__version__),
        measurements=_measurements(row, lesion or {}),
        qualitative_evaluations=_evaluations(row))


def _segment_reference(source: Dataset, seg: hd.seg.Segmentation, frame: int
                       ) -> hd.sr.ReferencedSegmentationFrame:
    # Not ReferencedSegmentationFrame.from_segmentation: it expects the segment number in each
    # frame's functional groups (highdicom puts a single one in the shared groups) and would
    # give a single-frame source a frame number.
    source_frames = [frame] if _multi_frame(source) else None
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        frame_number=frame, segment_number=_SEGMENT_NUMBER,
        source_image=hd.sr.SourceImageForSegmentation(
            source.SOPClassUID, source.SOPInstanceUID, source_frames))
    # A frame number names the segment too; the Image SOP Instance Reference Macro (PS3.3
    # 10.3) has Referenced Segment Number only where no frame number is given.
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return reference


def _measurements(row: Mapping[str, Any], lesion: Mapping[str, Any]
                  ) -> list[hd.sr.Measurement]:
    found = [hd.sr.Measurement(_probability_concept(label), value, codes.UCUM.NoUnits)
             for label, value in _probabilities(row)]
    found += _size(lesion, "area", codes.SCT.Area, codes.UCUM.SquareMillimeter)
    found += _size(lesion, "diameter", codes.SCT.LongAxis, codes.UCUM.Millimeter)
    found += _size(lesion, "perpendicular", codes.SCT.ShortAxis, codes.UCUM.Millimeter)
    uncertainty = _number(row, "uncertainty")
    if uncertainty is not None:
        found.append(hd.sr.Measurement(_UNCERTAINTY, uncertainty, codes.UCUM.NoUnits))
    return found


def _probabilities(row: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [(key.removeprefix("prob_"), value) for key in row if key.startswith("prob_")
            if (value := _number(row, key)) is not None]


def _probability_concept(label: str) -> Code | hd.sr.CodedConcept:
    return (_CLASS_PROBABILITIES.get(label)
            or hd.sr.CodedConcept(f"prob_{label}", _SCHEME, f"Probability of {label}"))


def _size(lesion: Mapping[str, Any], name: str, concept: Code, unit_mm: Code
          ) -> list[hd.sr.Measurement]:
    """The lesion record's `name` in mm (``<name>_mm``, ``area_mm2``) where the spacing is
    known, else in pixels (``<name>_px``); none without a lesion."""
    millimetres = _number(lesion, f"{name}_mm2" if name == "area" else f"{name}_mm")
    if millimetres is not None:
        return [hd.sr.Measurement(concept, millimetres, unit_mm)]
    pixels = _number(lesion, f"{name}_px")
    return [] if pixels is None else [hd.sr.Measurement(concept, pixels, _PIXELS)]


def _evaluations(row: Mapping[str, Any]) -> list[hd.sr.QualitativeEvaluation]:
    found = []
    label = next((value for value in (row.get("final_class"), row.get("predicted_class"))
                  if isinstance(value, str) and value), None)
    if label is not None:
        found.append(hd.sr.QualitativeEvaluation(_FINAL_CLASS, _class_code(label)))
    flag = _number(row, "low_confidence")
    if flag is not None:
        found.append(hd.sr.QualitativeEvaluation(
            _LOW_CONFIDENCE, codes.SCT.Yes if flag else codes.SCT.No))
    return found


def _class_code(label: str) -> Code | hd.sr.CodedConcept:
    return _CLASS_CODES.get(label) or hd.sr.CodedConcept(label, _SCHEME, label)


def _number(row: Mapping[str, Any], key: str) -> float | None:
    """The value as a float; None where the table has none (missing, None or NaN)."""
    value = row.get(key)
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _drop_source_equipment(dataset: Dataset) -> None:
    """highdicom lists the source's acquisition equipment, with its institution and station,
    as contributing equipment: optional (Type 3), and not data that the standard asks a derived
    object to carry. highdicom's own entry (processing equipment) stays."""
    acquisition = codes.DCM.AcquisitionEquipment.value
    dataset.ContributingEquipmentSequence = [
        item for item in dataset.get("ContributingEquipmentSequence", [])
        if item.PurposeOfReferenceCodeSequence[0].CodeValue != acquisition]


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
