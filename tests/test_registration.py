"""Registration of slide cancer outlines onto the needle tract: geometry against an independently
computed mapping, each validation error, the command line, and the docs' end-to-end example."""

from __future__ import annotations

import cmath
import csv
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.errors import InputError, SonocadError
from sonocad.io.annotations import (
    GeoAnnotation,
    GeoPolygon,
    geojson_mask,
    labelme_mask,
    read_labelme,
    read_voc_mask,
)
from sonocad.io.atomic import save_png, write_json
from sonocad.registration.fields import merge_fields, parse_biopsy
from sonocad.registration.runner import register, register_batch
from sonocad.registration.synthetic import write_example

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIZE = 160
TIP = (80.3, 79.6)  # off the pixel grid, so rounding cannot flip whole edges
LENGTH_MM, CORE_MM, CORE_HALF_WIDTH_MM = 3.0, 2.8, 0.6
# A cancer outline on the core, (u, v) in body mm: u from the dyed end, v across.
CANCER = [(0.6, -0.3), (1.4, -0.5), (2.3, -0.2), (2.1, 0.4), (1.0, 0.45)]
MPP, SHRINKAGE = 0.5, 0.15
SLIDE_ANGLE, SLIDE_ORIGIN = math.radians(70), complex(4000, 2500)


# --- a synthetic biopsy whose true mapping is known ----------------------------------------------


def _on_slide(u: float, v: float) -> list[float]:
    """Where body-mm core point (u, v) lies on the slide: shrunk, turned and shifted."""
    z = SLIDE_ORIGIN + complex(u, v) * cmath.exp(1j * SLIDE_ANGLE) * (1 - SHRINKAGE) * 1000 / MPP
    return [z.real, z.imag]


def _expected_pixels(u: float, v: float, angle_deg: float,
                     spacing: tuple[float, float]) -> tuple[float, float]:
    """Where core point (u, v) must land: the dyed end sits LENGTH_MM ahead of the tip, u runs
    back towards the tip, and v keeps its handedness (no mirror). Worked in mm, then pixels."""
    row_mm, col_mm = spacing
    theta = math.radians(angle_deg)
    heading = cmath.exp(1j * math.atan2(math.sin(theta) * row_mm, math.cos(theta) * col_mm))
    z = complex(TIP[0] * col_mm, TIP[1] * row_mm) + (LENGTH_MM - u - 1j * v) * heading
    return z.real / col_mm, z.imag / row_mm


def _write_case(root: Path, *, cancer=CANCER, core: str = "outline", angle: float = 30.0,
                spacing: tuple[float, float] = (0.1, 0.1), **fields: str) -> dict[str, str]:
    """An image and a slide; returns the fields of the biopsy (overridden by `fields`)."""
    root.mkdir(parents=True, exist_ok=True)
    save_png(root / "pre.png", np.full((SIZE, SIZE), 90, np.uint8))
    ring = [(0, -CORE_HALF_WIDTH_MM), (CORE_MM, -CORE_HALF_WIDTH_MM),
            (CORE_MM, CORE_HALF_WIDTH_MM), (0, CORE_HALF_WIDTH_MM), (0, -CORE_HALF_WIDTH_MM)]
    geometry = ({"type": "Polygon", "coordinates": [[_on_slide(*p) for p in ring]]}
                if core == "outline" else  # an axis drawn from the far end to the dyed end
                {"type": "LineString", "coordinates": [_on_slide(CORE_MM, 0), _on_slide(0, 0)]})
    features = [{"type": "Feature", "geometry": geometry, "properties": {"name": "core"}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": _on_slide(0.1, 0)},
                 "properties": {"classification": {"name": "dye"}}}]
    if cancer:
        features.append({"type": "Feature", "geometry": {
            "type": "Polygon", "coordinates": [[_on_slide(*p) for p in [*cancer, cancer[0]]]]},
            "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}})
    write_json(root / "slide.geojson", {"type": "FeatureCollection", "features": features})
    return {"image": str(root / "pre.png"), "geojson": str(root / "slide.geojson"),
            "tip": f"{TIP[0]},{TIP[1]}", "angle": str(angle), "length": str(LENGTH_MM),
            "spacing": ",".join(map(str, spacing)), "wsi_mpp": str(MPP),
            "shrinkage": str(SHRINKAGE), **fields}


def _full_image_mask(registration) -> np.ndarray:
    crop = registration.record["crop"]
    full = np.zeros((SIZE, SIZE), bool)
    full[crop["y"]:crop["y"] + crop["height"], crop["x"]:crop["x"] + crop["width"]] = \
        registration.mask
    return full


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("spacing", [(0.05, 0.05), (0.1, 0.1), (0.08, 0.05)])
@pytest.mark.parametrize("angle", [0, 30, 135, 250])
def test_a_cancer_outline_lands_on_the_expected_pixels(tmp_path, angle, spacing):
    fields = _write_case(tmp_path, angle=angle, spacing=spacing)
    registration = register(parse_biopsy(fields))
    expected_ring = np.array([_expected_pixels(u, v, angle, spacing) for u, v in CANCER])
    expected = geojson_mask([GeoAnnotation(None, None, "Polygon", (GeoPolygon(expected_ring),))],
                            (SIZE, SIZE))
    assert expected.sum() > 50
    assert _iou(_full_image_mask(registration), expected) >= 0.95
    area_mm2 = registration.record["cancer"]["area_mm2"]
    shoelace = 0.5 * abs(sum(u1 * v2 - u2 * v1 for (u1, v1), (u2, v2)
                             in zip(CANCER, CANCER[1:] + CANCER[:1], strict=True)))
    assert area_mm2 == pytest.approx(shoelace, rel=0.35)  # pixel-edge inclusive rasterising


def test_a_core_drawn_as_its_axis_from_the_far_end_maps_the_same(tmp_path):
    outline = register(parse_biopsy(_write_case(tmp_path / "outline")))
    axis = register(parse_biopsy(_write_case(tmp_path / "axis", core="axis")))
    assert axis.record["core"]["drawn_as"] == "axis"
    assert _iou(_full_image_mask(axis), _full_image_mask(outline)) >= 0.95


def test_the_record_holds_the_maps_that_reproduce_the_outline(tmp_path):
    registration = register(parse_biopsy(_write_case(tmp_path, angle=135)))
    slide_to_image = np.array(registration.record["maps"]["slide_px_to_image_px"])
    u, v = CANCER[2]
    mapped = slide_to_image @ [*_on_slide(u, v), 1.0]
    assert mapped == pytest.approx(_expected_pixels(u, v, 135, (0.1, 0.1)), abs=1e-4)
    assert registration.record["specimen"] == {"length_mm": LENGTH_MM, "from": "given"}
    assert registration.record["needle"]["width_mm"] == pytest.approx(1.651)


# --- validation errors -------------------------------------------------------------------------


def test_needle_tip_outside_the_image(tmp_path):
    fields = _write_case(tmp_path, tip="500,10")
    with pytest.raises(InputError, match=r"needle tip .* is outside the 160x160 image") as error:
        register(parse_biopsy(fields))
    assert error.value.path == Path(fields["image"])


def test_tract_leaving_the_image(tmp_path):
    with pytest.raises(InputError, match="needle tract leaves the 160x160 image"):
        register(parse_biopsy(_write_case(tmp_path, tip="150,80", angle=0)))


def test_zero_length_specimen(tmp_path):
    with pytest.raises(SonocadError, match="zero-length specimen"):
        parse_biopsy(_write_case(tmp_path, length="0"))
    fields = _write_case(tmp_path, angle=0)
    del fields["length"]
    fields["post_tip"] = "75,80"  # behind the pre-fire tip
    with pytest.raises(InputError, match="zero-length specimen"):
        register(parse_biopsy(fields))


def test_cancer_outside_the_core(tmp_path):
    beside = [(u, v + 1.5) for u, v in CANCER]
    fields = _write_case(tmp_path, cancer=beside)
    with pytest.raises(InputError, match="cancer outline 1 lies outside the core") as error:
        register(parse_biopsy(fields))
    assert error.value.path == Path(fields["geojson"])
    with pytest.raises(InputError, match=r"reaches 2\.3 mm from the dyed end, past the 2\.0 mm"):
        register(parse_biopsy(_write_case(tmp_path, length="2")))


def test_missing_tip_marker(tmp_path):
    fields = _write_case(tmp_path)
    del fields["tip"], fields["angle"]
    labelme = tmp_path / "pre.json"
    write_json(labelme, {"shapes": [{"label": "needle", "shape_type": "line",
                                     "points": [[40, 60], [80, 80]]}], "imagePath": "pre.png"})
    with pytest.raises(InputError, match="no 'tip' point") as error:
        register(parse_biopsy({**fields, "labelme": str(labelme)}))
    assert error.value.path == labelme


def test_the_needle_must_be_given_one_way(tmp_path):
    fields = _write_case(tmp_path, labelme="pre.json")
    with pytest.raises(SonocadError, match="either as labelme or as tip and angle"):
        parse_biopsy(fields)


def test_a_row_giving_the_length_replaces_the_command_lines_way():
    merged = merge_fields({"length": "20", "wsi_mpp": "0.25"}, {"post_tip": " 3,4 ", "id": ""})
    assert merged == {"wsi_mpp": "0.25", "post_tip": "3,4"}


# --- command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The docs' synthetic series, three biopsies of it."""
    return write_example(tmp_path_factory.mktemp("example"), biopsies=3)


def test_cli_registers_one_biopsy_into_a_voc_dataset(example, tmp_path, capsys):
    source, out = example.parent, tmp_path / "dataset"
    assert main(["register", str(source / "b01_pre.png"), "--labelme",
                 str(source / "b01_pre.json"), "--post-fire", str(source / "b01_post.json"),
                 "--geojson", str(source / "b01.geojson"), "--spacing", "0.2", "--wsi-mpp", "2",
                 "--shrinkage", "0.1", "--patient-id", "P1", "--id", "b01", "--out",
                 str(out)]) == 0
    assert "b01:" in capsys.readouterr().out

    [sample] = open_dataset(out)  # detected as VOC
    assert sample.image_id == "b01.png" and sample.label == "malignant"
    crop = sample.load_image().pixels
    voc = read_voc_mask(out / "SegmentationClass" / "b01.png", crop.shape)
    drawn = labelme_mask(read_labelme(out / "labelme" / "b01.json"), crop.shape)
    assert voc.any() and np.array_equal(voc, drawn)
    # the synthetic tumour is dark: the mask must sit on it
    assert crop[voc].mean() < 0.6 * crop[~voc].mean()

    record = json.loads((out / "transforms" / "b01.json").read_text())
    assert record["specimen"]["from"] == "post-fire tip"
    assert record["specimen"]["length_mm"] == pytest.approx(22.0)
    with PILImage.open(out / "overlays" / "b01.png") as overlay:  # pre-fire | post-fire
        assert overlay.size == (2 * crop.shape[1] + 4, crop.shape[0])
    [manifest] = open_dataset(out / "manifest.csv")
    assert (manifest.patient_id, manifest.pixel_spacing_mm) == ("P1", (0.2, 0.2))
    assert np.array_equal(manifest.load_mask(crop.shape), voc)


def test_cli_error_is_one_line_naming_the_file(example, tmp_path, capsys):
    source = example.parent
    assert main(["register", str(source / "b01_pre.png"), "--tip", "900,5", "--angle", "20",
                 "--geojson", str(source / "b01.geojson"), "--spacing", "0.2", "--wsi-mpp", "2",
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(source / "b01_pre.png") in error and "outside" in error


def test_batch_carries_on_past_a_bad_row_and_takes_defaults_from_options(example, tmp_path,
                                                                           capsys):
    source = tmp_path / "source"
    source.mkdir()
    for path in example.parent.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    marks = json.loads((source / "b02_pre.json").read_text())
    marks["shapes"] = [s for s in marks["shapes"] if s["label"] != "tip"]
    write_json(source / "b02_pre.json", marks)
    with open(example) as handle:  # drop the columns the command line gives instead
        rows = [{k: v for k, v in row.items() if k not in ("wsi_mpp", "shrinkage")}
                for row in csv.DictReader(handle)]
    with open(source / "biopsies.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    out = tmp_path / "dataset"
    assert main(["register", "--batch", str(source / "biopsies.csv"), "--wsi-mpp", "2",
                 "--shrinkage", "0.1", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "registered 2 biopsies" in captured.out
    [failure] = captured.err.strip().splitlines()
    assert "line 3" in failure and "b02_pre.json" in failure and "no 'tip' point" in failure
    samples = open_dataset(out / "manifest.csv")
    assert [s.image_id for s in samples] == ["JPEGImages/b01.png", "JPEGImages/b03.png"]
    assert [s.label for s in samples] == ["malignant", "normal"]  # b03 is cancer-free


def test_batch_rejects_unknown_columns(tmp_path):
    bad = tmp_path / "biopsies.csv"
    bad.write_text("image,tipx\npre.png,3\n")
    with pytest.raises(InputError, match="unknown column"):
        register_batch(bad, tmp_path / "out")


# --- the docs' end-to-end example --------------------------------------------------------------


def test_the_docs_example_runs_from_register_to_evaluate(tmp_path, monkeypatch):
    doc = (PROJECT_ROOT / "docs" / "registration.md").read_text()
    script = re.findall(r"```sh\n(.*?)```", doc, re.S)[-1]
    monkeypatch.chdir(tmp_path)
    for line in script.strip().splitlines():
        argv = shlex.split(line.replace("recipes/", f"{PROJECT_ROOT}/recipes/"))
        if argv[0] == "python":
            subprocess.run([sys.executable, *argv[1:]], check=True, cwd=tmp_path)
        else:
            assert argv[0] == "sonocad"
            assert main(argv[1:]) == 0, line
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] >= 1
    assert len(list((tmp_path / "dataset" / "overlays").glob("*.png"))) == 8
