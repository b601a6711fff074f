"""Annotation readers and writers: binary masks, VOC, Labelme, QuPath GeoJSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonocad.errors import InputError
from sonocad.io.annotations import (
    GeoAnnotation,
    MaskFormat,
    Shape,
    geojson_mask,
    labelme_mask,
    read_binary_mask,
    read_labelme,
    read_mask,
    read_qupath_geojson,
    read_voc_classes,
    read_voc_mask,
    save_voc_mask,
    voc_palette,
    write_labelme,
)
from sonocad.io.atomic import save_png

H, W = 20, 30


@pytest.fixture
def lesion() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[5:9, 10:17] = True
    return mask


def _as_mode(mask: np.ndarray, mode: str) -> Image.Image:
    """`mask` drawn as a typical annotation tool would store it in `mode`."""
    if mode == "1":
        return Image.fromarray(mask)
    if mode == "L":
        return Image.fromarray(mask.astype(np.uint8) * 255)
    if mode == "I;16":
        return Image.fromarray(mask.astype(np.uint16))  # lesion = 1, barely non-zero
    if mode == "RGB":  # lesion drawn in pure blue: only one channel is non-zero
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[mask, 2] = 255
        return Image.fromarray(rgb)
    if mode == "RGBA":  # like BUSI's benign (4)_mask_1.png: opaque everywhere
        rgba = np.full((H, W, 4), 255, np.uint8)
        rgba[~mask, :3] = 0
        return Image.fromarray(rgba)
    if mode == "P":  # index 0 is white but unused; index 1 black background; 2 red lesion
        image = Image.fromarray(np.where(mask, 2, 1).astype(np.uint8))
        image.putpalette([255, 255, 255, 0, 0, 0, 255, 0, 0])
        return image
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["1", "L", "I;16", "RGB", "RGBA", "P"])
def test_binary_mask_any_mode(tmp_path: Path, lesion: np.ndarray, mode: str) -> None:
    path = tmp_path / "mask.png"
    image = _as_mode(lesion, mode)
    assert image.mode == mode
    image.save(path)
    np.testing.assert_array_equal(read_binary_mask(path, (H, W)), lesion)


def test_binary_mask_all_black_rgb_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "normal_mask.png"
    Image.new("RGB", (W, H)).save(path)
    mask = read_binary_mask(path, (H, W))
    assert mask.dtype == bool and mask.shape == (H, W) and not mask.any()


def test_binary_mask_ignores_alpha_only_pixels(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black: alpha alone is not lesion
    path = tmp_path / "mask.png"
    Image.fromarray(rgba).save(path)
    assert not read_binary_mask(path, (H, W)).any()


def test_read_mask_merges_files(tmp_path: Path, lesion: np.ndarray) -> None:
    second = np.zeros_like(lesion)
    second[12:15, 1:4] = True
    save_png(tmp_path / "a_mask.png", lesion)
    save_png(tmp_path / "a_mask_1.png", second)
    merged = read_mask([tmp_path / "a_mask.png", tmp_path / "a_mask_1.png"], (H, W),
                       MaskFormat.BINARY)
    np.testing.assert_array_equal(merged, lesion | second)
    assert merged.sum() == lesion.sum() + second.sum() == 28 + 9


def test_a_saved_mask_is_0_255_grayscale(tmp_path: Path, lesion: np.ndarray) -> None:
    save_png(tmp_path / "m.png", lesion)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "L"
        assert set(np.unique(np.asarray(image)).tolist()) == {0, 255}
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temporary left behind


def test_wrong_size_names_file_and_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "case_mask.png"
    Image.new("L", (500, 400)).save(path)
    with pytest.raises(InputError) as info:
        read_mask([path], (400, 512), MaskFormat.BINARY)
    assert str(info.value) == f"{path}: mask is 500x400 but the image is 512x400"


# --- VOC ---------------------------------------------------------------------------------------


def test_voc_palette_matches_the_standard_colours() -> None:
    palette = np.array(voc_palette()).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]  # aeroplane
    assert palette[2].tolist() == [0, 128, 0]  # bicycle
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # void border


def test_voc_round_trip(tmp_path: Path) -> None:
    classes = np.zeros((H, W), np.uint8)
    classes[2:6, 2:6] = 1  # benign: 16 px
    classes[10:13, 20:25] = 2  # malignant: 15 px
    classes[1, :] = 255  # void: never lesion
    path = tmp_path / "SegmentationClass" / "case.png"
    save_voc_mask(path, classes, ["_background_", "benign", "malignant"])
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_voc_classes(path), classes)
    mask = read_voc_mask(path, (H, W))
    assert mask.sum() == 31 and not mask[1].any()
    np.testing.assert_array_equal(read_mask([path], (H, W), MaskFormat.VOC), mask)


def test_save_voc_mask_rejects_unnamed_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[3\]"):
        save_voc_mask(tmp_path / "x.png", np.full((2, 2), 3), ["_background_", "lesion"])


def test_voc_rejects_colour_masks(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (W, H)).save(path)
    with pytest.raises(InputError, match="palette"):
        read_voc_classes(path)


# --- Labelme -----------------------------------------------------------------------------------


def test_labelme_round_trip_with_hand_counted_pixels(tmp_path: Path) -> None:
    shapes = [
        # inclusive corners: (11 - 2 + 1) x (12 - 3 + 1) = 100 pixels; drawn bottom-right first
        Shape("benign", "rectangle", [[11, 12], [2, 3]]),
        # right triangle with legs of 10 pixels: x + y <= 9 holds for 55 pixels
        Shape("malignant", "polygon", [[40, 0], [49, 0], [40, 9]]),
        Shape("needle_tip", "point", [[30.0, 30.0]]),
        Shape("core_axis", "line", [[0, 50], [59, 50]]),
    ]
    path = tmp_path / "ann" / "case.json"
    write_labelme(path, "../images/case.png", (60, 64), shapes)

    raw = json.loads(path.read_text())
    assert raw["version"].startswith("5.") and raw["flags"] == {} and raw["imageData"] is None
    assert (raw["imagePath"], raw["imageHeight"], raw["imageWidth"]) == (
        "../images/case.png", 60, 64)
    assert {"label", "points", "group_id", "shape_type", "flags"} <= set(raw["shapes"][0])

    labelme = read_labelme(path)
    assert labelme.image_path == "../images/case.png"
    assert (labelme.image_height, labelme.image_width) == (60, 64)
    assert [(s.label, s.kind) for s in labelme.shapes] == [(s.label, s.kind) for s in shapes]
    np.testing.assert_array_equal(labelme.shapes[1].points, [[40, 0], [49, 0], [40, 9]])
    np.testing.assert_array_equal(labelme.points("needle_tip"), [[30, 30]])
    assert labelme.points("benign").shape == (0, 2)

    assert labelme_mask(labelme, (60, 64), {"benign"}).sum() == 100
    assert labelme_mask(labelme, (60, 64), {"malignant"}).sum() == 55
    disc = labelme_mask(labelme, (60, 64), {"needle_tip"})
    rows, cols = np.mgrid[:60, :64]
    np.testing.assert_array_equal(disc, np.hypot(cols - 30, rows - 30) <= 5.5)
    assert disc.sum() == 97
    assert not labelme_mask(labelme, (60, 64), {"core_axis"}).any()  # lines have no area
    assert labelme_mask(labelme, (60, 64)).sum() == 100 + 55 + 97
    np.testing.assert_array_equal(read_mask([path], (60, 64), MaskFormat.LABELME),
                                  labelme_mask(labelme, (60, 64)))


def test_labelme_thin_polygon_is_kept(tmp_path: Path) -> None:
    # All vertices on one row: no area, but the outline still marks 10 pixels.
    path = tmp_path / "thin.json"
    write_labelme(path, "t.png", (10, 12), [Shape("x", "polygon", [[0, 4], [9, 4], [5, 4]])])
    mask = labelme_mask(read_labelme(path), (10, 12))
    assert mask.sum() == 10 and mask[4, :10].all()


def test_labelme_circle(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write_labelme(path, "c.png", (40, 40), [Shape("lesion", "circle", [[20, 20], [28, 20]])])
    mask = labelme_mask(read_labelme(path), (40, 40))
    assert mask[20, 28] and mask[12, 20] and not mask[20, 29] and not mask[11, 11]


def test_labelme_mask_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    write_labelme(path, "case.png", (400, 500), [Shape("x", "point", [[1, 1]])])
    with pytest.raises(InputError, match=r"for an image of 500x400 but the image is 512x400"):
        labelme_mask(read_labelme(path), (400, 512))


def test_labelme_unsupported_kind_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    write_labelme(path, "case.png", (10, 10), [Shape("x", "mask", [[1, 1], [4, 4]])])
    with pytest.raises(InputError, match="cannot rasterise shape_type 'mask'"):
        labelme_mask(read_labelme(path), (10, 10))


def test_write_labelme_rejects_too_few_points(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="polygon needs at least 3 points, got 2"):
        write_labelme(tmp_path / "x.json", "x.png", (9, 9), [Shape("a", "polygon", [[0, 0],
                                                                                     [1, 1]])])
    assert not (tmp_path / "x.json").exists()


# --- QuPath GeoJSON ----------------------------------------------------------------------------


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


QUPATH_EXPORT = {
    "type": "FeatureCollection",
    "features": [
        {   # 20 x 20 = 400 pixels with a 10 x 10 = 100 pixel hole
            "type": "Feature", "id": "a",
            "geometry": {"type": "Polygon",
                         "coordinates": [_square(10, 10, 29, 29), _square(15, 15, 24, 24)]},
            "properties": {"objectType": "annotation", "name": "cancer 1",
                           "classification": {"name": "Tumor", "color": [200, 0, 0]}},
        },
        {   # two 5 x 5 squares; the classification sits on the feature itself
            "type": "Feature",
            "geometry": {"type": "MultiPolygon",
                         "coordinates": [[_square(40, 40, 44, 44)], [_square(50, 40, 54, 44)]]},
            "classification": {"name": "Stroma"},
            "properties": {},
        },
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[0, 5], [59, 5]]},
            "properties": {"name": "core axis", "classification": "Core"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [3, 4]},
            "properties": None,
        },
    ],
}


def test_qupath_geojson(tmp_path: Path) -> None:
    path = tmp_path / "case.geojson"
    path.write_text(json.dumps(QUPATH_EXPORT))
    tumour, stroma, axis, point = read_qupath_geojson(path)

    assert (tumour.name, tumour.classification, tumour.geometry_type) == (
        "cancer 1", "Tumor", "Polygon")
    assert len(tumour.polygons) == 1 and len(tumour.polygons[0].holes) == 1
    assert (stroma.classification, len(stroma.polygons)) == ("Stroma", 2)
    assert (axis.geometry_type, axis.classification, axis.polygons) == ("LineString", "Core", ())
    np.testing.assert_array_equal(axis.coordinates, [[0, 5], [59, 5]])
    assert (point.geometry_type, point.name, point.classification) == ("Point", None, None)
    np.testing.assert_array_equal(point.coordinates, [[3, 4]])

    shape = (60, 60)
    tumour_mask = geojson_mask([tumour], shape)
    assert tumour_mask.sum() == 400 - 100 and not tumour_mask[20, 20] and tumour_mask[12, 12]
    assert geojson_mask([stroma], shape).sum() == 25 + 25
    assert geojson_mask([axis, point], shape).sum() == 0  # no area
    assert geojson_mask([tumour, stroma], shape, classifications={"Stroma"}).sum() == 50
    assert read_mask([path], shape, MaskFormat.GEOJSON).sum() == 350


def test_qupath_feature_list_and_empty_collection(tmp_path: Path) -> None:
    listed = tmp_path / "list.geojson"
    listed.write_text(json.dumps(QUPATH_EXPORT["features"][:1]))
    assert [a.classification for a in read_qupath_geojson(listed)] == ["Tumor"]
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    assert read_qupath_geojson(empty) == []
    assert isinstance(read_qupath_geojson(listed)[0], GeoAnnotation)


# --- bad input ---------------------------------------------------------------------------------


def _png_bytes() -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


BAD_IMAGES = {
    "empty.png": (b"", "empty"),
    "truncated.png": (_png_bytes()[:300], "truncated"),
    "text.png": (b"this is not an image\n", "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
@pytest.mark.parametrize("reader", [read_binary_mask, read_voc_mask])
def test_bad_mask_images(tmp_path: Path, name: str, reader) -> None:
    content, problem = BAD_IMAGES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as info:
        reader(path, (64, 64))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_mask_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        read_binary_mask(tmp_path / "missing.png", (H, W))


BAD_JSON = {
    "invalid.json": ('{"shapes": [', read_labelme, "invalid JSON at line 1"),
    "empty.json": ("", read_labelme, "invalid JSON"),
    "not_labelme.json": ('{"type": "FeatureCollection"}', read_labelme, "not a Labelme file"),
    "two_point_polygon.json": (
        json.dumps({"imagePath": "a.png", "shapes": [
            {"label": "x", "shape_type": "polygon", "points": [[0, 0], [1, 1]]}]}),
        read_labelme, r"shape 0 \('x'\): a polygon needs at least 3 points, got 2"),
    "one_point_rectangle.json": (
        json.dumps({"imagePath": "a.png", "shapes": [
            {"label": "x", "shape_type": "rectangle", "points": [[0, 0]]}]}),
        read_labelme, "a rectangle needs 2 points, got 1"),
    "bad_points.json": (
        json.dumps({"imagePath": "a.png", "shapes": [
            {"label": "x", "shape_type": "point", "points": [["a", "b"]]}]}),
        read_labelme, "shape 0"),
    "no_features.geojson": ('{"type": "FeatureCollection"}', read_qupath_geojson,
                            "no 'features'"),
    "bad_geometry.geojson": (
        json.dumps([{"type": "Feature", "geometry": {"type": "Polygon",
                                                     "coordinates": [[[0, 0], [1, 1]]]}}]),
        read_qupath_geojson, "ring needs at least 3 positions"),
    "collection.geojson": (
        json.dumps([{"type": "Feature", "geometry": {"type": "GeometryCollection"}}]),
        read_qupath_geojson, "unsupported geometry type 'GeometryCollection'"),
}


@pytest.mark.parametrize("name", sorted(BAD_JSON))
def test_bad_json_files(tmp_path: Path, name: str) -> None:
    text, reader, problem = BAD_JSON[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        reader(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


# --- BUSI --------------------------------------------------------------------------------------


@pytest.mark.busi
def test_busi_masks(busi_root: Path) -> None:
    image = busi_root / "benign" / "benign (4).png"
    with Image.open(image) as im:
        shape = (im.height, im.width)
    paths = [busi_root / "benign" / "benign (4)_mask.png",
             busi_root / "benign" / "benign (4)_mask_1.png"]
    first, second = (read_mask([p], shape, MaskFormat.BINARY) for p in paths)
    union = read_mask(paths, shape, MaskFormat.BINARY)
    assert first.any() and second.any()  # the RGBA mask_1 has a lesion too
    assert union.sum() > max(first.sum(), second.sum())
    np.testing.assert_array_equal(union, first | second)

    normal = busi_root / "normal" / "normal (1).png"
    with Image.open(normal) as im:
        shape = (im.height, im.width)
    assert not read_mask([busi_root / "normal" / "normal (1)_mask.png"], shape,
                         MaskFormat.BINARY).any()
