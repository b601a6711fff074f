"""Read and write lesion annotations: binary mask images, Pascal VOC class PNGs, Labelme JSON
and QuPath GeoJSON. Every reader returns a bool (H, W) lesion mask or the parsed shapes. Mask
images are turned upright by their EXIF orientation, as `sonocad.io.images` turns images.

Pixel convention for vector shapes (Labelme and GeoJSON alike): coordinates are pixel x
(column) and y (row); an integer coordinate is a pixel centre and edges are inclusive, as in
Labelme's own ``shape_to_mask``/labelme2voc. A rectangle with corners (2, 3) and (11, 12) covers
10 x 10 = 100 pixels; corners (0, 0) and (10, 10) cover 11 x 11 = 121. QuPath coordinates put
the origin at the corner of the top-left pixel, so a QuPath outline rasterised here reaches at
most one pixel further right and down than QuPath's own area measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from sonocad.errors import InputError
from sonocad.io.atomic import atomic_open, write_json
from sonocad.io.pixels import check_size


class MaskFormat(str, Enum):
    """How a sample's annotation files encode the lesion."""

    BINARY = "binary"  # non-zero pixels are lesion, transparent ones not; files are OR-merged
    VOC = "voc"  # Pascal VOC class-index PNG; 0 background, 255 void border
    LABELME = "labelme"  # Labelme JSON polygons, rectangles, points
    GEOJSON = "geojson"  # QuPath GeoJSON polygons in image pixel coordinates


# A Labelme point becomes the disc Labelme's shape_to_mask draws: PIL's ellipse in the box
# centre +- 5 px, i.e. every pixel within 5.5 px of the point (97 pixels). Big enough to see a
# needle tip, small enough not to swallow a small lesion.
POINT_RADIUS = 5

LABELME_VERSION = "5.5.0"

# (fewest, most) points of each Labelme shape_type, as Labelme itself asserts them;
# unknown types need one point.
_POINT_COUNTS: dict[str, tuple[int, int | None]] = {
    "polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2), "line": (2, 2),
    "linestrip": (2, None), "point": (1, 1), "points": (1, None), "mask": (2, 2)}
# Labelme shapes that measure a length rather than outline an area: not part of a mask.
_LINE_KINDS = {"line", "linestrip"}
_POINT_KINDS = {"point", "points"}

VOID_CLASS = 255  # VOC marks the uncertain border around objects with 255


class MaskSizeError(InputError):
    """An annotation made for an image of another size than the one it is read for."""


# --- data classes ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Shape:
    """One Labelme shape. `points` is a read-only float (N, 2) array of x, y."""

    label: str
    kind: str
    points: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", _as_points(self.points))


@dataclass(frozen=True, eq=False)
class LabelmeFile:
    """A parsed Labelme JSON file. `image_path` is as written, relative to the JSON's folder."""

    path: Path
    shapes: tuple[Shape, ...]
    image_path: str
    image_height: int | None
    image_width: int | None

    def points(self, label: str | None = None) -> np.ndarray:
        """The (N, 2) x, y of every point shape (e.g. needle tips), optionally of one label."""
        picked = [s.points for s in self.shapes
                  if s.kind in _POINT_KINDS and (label is None or s.label == label)]
        return np.concatenate(picked) if picked else np.empty((0, 2))


@dataclass(frozen=True, eq=False)
class GeoPolygon:
    """A polygon: exterior ring and holes, each a float (N, 2) array of x, y."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True, eq=False)
class GeoAnnotation:
    """One GeoJSON feature. Polygon/MultiPolygon fill `polygons`; LineString (e.g. a core's
    long axis), Point and MultiPoint fill `coordinates` (N, 2) instead."""

    name: str | None
    classification: str | None
    geometry_type: str
    polygons: tuple[GeoPolygon, ...] = ()
    coordinates: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))


# --- any format ------------------------------------------------------------------------------


def read_mask(paths: Sequence[Path], shape: tuple[int, int], fmt: MaskFormat) -> np.ndarray:
    """The bool (H, W) lesion mask of a sample: the union of all its annotation files."""
    reader = _MASK_READERS[MaskFormat(fmt)]
    mask = np.zeros(shape, dtype=bool)
    for path in paths:
        mask |= reader(Path(path), shape)
    return mask


# --- binary and VOC mask images --------------------------------------------------------------


def read_binary_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Any non-zero pixel is lesion, in any colour channel of any mode.

    Transparent pixels (alpha 0) are background, as a viewer shows them; and where every
    other pixel has one colour, those pixels are the lesion: the alpha channel is then the mask
    (an outline painted on a transparent layer whose hidden colour is white, say). A mask
    opaque everywhere (BUSI's RGBA masks) is read by its colour alone.
    """
    image = _load_image(path)
    _check_size(path, image.size, shape)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # the palette colour, not its index, is what was drawn
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        return pixels != 0
    bands = image.getbands()
    colour = pixels[..., [i for i, band in enumerate(bands) if band != "A"]]
    drawn = np.any(colour != 0, axis=-1)
    if "A" not in bands:
        return drawn
    shown = pixels[..., bands.index("A")] != 0
    if shown.all():
        return drawn
    shown_colours = colour[shown]
    if (shown_colours == shown_colours[:1]).all():  # all one colour (or none): alpha is all
        return shown
    return drawn & shown


def read_voc_classes(path: str | Path) -> np.ndarray:
    """The uint8 class index of every pixel of a VOC class PNG (palette or grayscale)."""
    image = _load_image(path)
    if image.mode not in ("P", "L", "1"):
        raise InputError(path, f"VOC class mask is {image.mode}; expected a palette (P) or "
                               "grayscale (L) PNG of class indices")
    return np.asarray(image).astype(np.uint8)


def read_voc_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Lesion = any class other than background (0) and the void border (255)."""
    classes = read_voc_classes(path)
    _check_size(path, (classes.shape[1], classes.shape[0]), shape)
    return (classes != 0) & (classes != VOID_CLASS)


def save_voc_mask(path: str | Path, classes: np.ndarray, class_names: Sequence[str]) -> None:
    """Write class indices as a palette PNG in the VOC colour map, atomically. Every index
    other than 255 (void) must name a class in `class_names` (index 0 is the background)."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"VOC classes are a 2-D integer array; got {classes.dtype} "
                         f"{classes.shape}")
    unnamed = sorted(set(np.unique(classes).tolist()) - set(range(len(class_names)))
                     - {VOID_CLASS})
    if unnamed:
        raise ValueError(f"class indices {unnamed} are not among the {len(class_names)} "
                         "class names (and are not 255, void)")
    image = Image.fromarray(classes.astype(np.uint8))
    image.putpalette(voc_palette())
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def voc_palette() -> list[int]:
    """The standard Pascal VOC colour map (768 values): class bits spread over R, G, B."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


# --- Labelme ---------------------------------------------------------------------------------


def read_labelme(path: str | Path) -> LabelmeFile:
    """Parse a Labelme JSON file, checking each shape has as many points as its type needs."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise InputError(path, "not a Labelme file (no 'shapes' list)")
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise InputError(path, "Labelme file has no 'imagePath'")
    shapes = tuple(_labelme_shape(path, i, s) for i, s in enumerate(data["shapes"]))
    return LabelmeFile(path, shapes, image_path, _optional_size(path, data, "imageHeight"),
                       _optional_size(path, data, "imageWidth"))


def labelme_mask(labelme: LabelmeFile, shape: tuple[int, int],
                 labels: Collection[str] | None = None) -> np.ndarray:
    """Rasterise polygons, rectangles, circles and points (discs of POINT_RADIUS) with the
    given labels (all when None); lines and linestrips measure lengths and are left out."""
    if labelme.image_height is not None and labelme.image_width is not None:
        _check_size(labelme.path, (labelme.image_width, labelme.image_height), shape,
                    what="annotation is for an image of")
    canvas = _canvas(shape)
    draw = ImageDraw.Draw(canvas)
    for index, item in enumerate(labelme.shapes):
        if item.kind in _LINE_KINDS or (labels is not None and item.label not in labels):
            continue
        pts = item.points
        if item.kind == "polygon":
            draw.polygon(_xy(pts), fill=1, outline=1)
        elif item.kind == "rectangle":
            # PIL wants the top-left corner first; Labelme keeps the order they were drawn in
            draw.rectangle(pts.min(axis=0).tolist() + pts.max(axis=0).tolist(), fill=1,
                           outline=1)
        elif item.kind == "circle":  # centre, then a point on the rim
            _disc(draw, pts[0], math.dist(pts[0], pts[1]))
        elif item.kind in _POINT_KINDS:
            for point in pts:
                _disc(draw, point, POINT_RADIUS)
        else:
            raise InputError(labelme.path, f"shape {index} ({item.label!r}): cannot rasterise "
                                           f"shape_type {item.kind!r}")
    return np.asarray(canvas)


def write_labelme(path: str | Path, image_path: str, image_shape: tuple[int, int],
                  shapes: Sequence[Shape]) -> None:
    """Write a Labelme 5.x JSON file atomically; `image_path` is relative to the JSON."""
    for index, item in enumerate(shapes):
        if problem := _points_problem(item.kind, len(item.points)):
            raise ValueError(f"shape {index} ({item.label!r}): {problem}")
    height, width = image_shape
    write_json(path, {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": [{"label": s.label, "points": s.points.tolist(), "group_id": None,
                    "description": "", "shape_type": s.kind, "flags": {}, "mask": None}
                   for s in shapes],
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    })


def _labelme_shape(path: Path, index: int, raw: Any) -> Shape:
    if not isinstance(raw, dict) or not isinstance(raw.get("label"), str):
        raise InputError(path, f"shape {index} has no 'label'")
    kind = raw.get("shape_type") or "polygon"  # Labelme reads a missing type as a polygon
    try:
        item = Shape(raw["label"], str(kind), raw.get("points"))
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"shape {index} ({raw['label']!r}): {exc}") from None
    if problem := _points_problem(item.kind, len(item.points)):
        raise InputError(path, f"shape {index} ({item.label!r}): {problem}")
    return item


def _points_problem(kind: str, count: int) -> str | None:
    fewest, most = _POINT_COUNTS.get(kind, (1, None))
    if fewest <= count and (most is None or count <= most):
        return None
    needed = f"at least {fewest}" if most is None else str(fewest)
    return f"a {kind} needs {needed} point{'s' * (needed != '1')}, got {count}"


def _optional_size(path: Path, data: dict, key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(path, f"'{key}' is {value!r}, not a positive integer")
    return value


# --- QuPath GeoJSON --------------------------------------------------------------------------


def read_qupath_geojson(path: str | Path) -> list[GeoAnnotation]:
    """Read a QuPath export: a FeatureCollection, a list of Features or one Feature. An empty
    FeatureCollection is valid (no annotations)."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and isinstance(data.get("features"), list):
        features = data["features"]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError(path, "GeoJSON has no 'features' (expected a FeatureCollection or a "
                               "list of Features)")
    return [_geo_annotation(path, i, feature) for i, feature in enumerate(features)]


def geojson_mask(annotations: Sequence[GeoAnnotation], shape: tuple[int, int],
                 classifications: Collection[str] | None = None) -> np.ndarray:
    """Rasterise polygons (holes subtracted) of the given classifications (all when None);
    lines and points have no area and are left out."""
    mask = np.zeros(shape, dtype=bool)
    for annotation in annotations:
        if classifications is not None and annotation.classification not in classifications:
            continue
        for polygon in annotation.polygons:
            # One canvas per polygon, so that its holes cannot cut into its neighbours.
            canvas = _canvas(shape)
            draw = ImageDraw.Draw(canvas)
            draw.polygon(_xy(polygon.exterior), fill=1, outline=1)
            for hole in polygon.holes:
                draw.polygon(_xy(hole), fill=0, outline=0)
            mask |= np.asarray(canvas)
    return mask


def _geo_annotation(path: Path, index: int, feature: Any) -> GeoAnnotation:
    geometry = feature.get("geometry") if isinstance(feature, dict) else None
    if not isinstance(geometry, dict):
        raise InputError(path, f"feature {index} has no geometry")
    properties = feature.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    name = properties.get("name")
    found = {"name": name if isinstance(name, str) else None,
             "classification": _classification(properties.get("classification")
                                               or feature.get("classification")),
             "geometry_type": str(kind)}
    try:
        if kind == "Polygon":
            return GeoAnnotation(**found, polygons=(_geo_polygon(coordinates),))
        if kind == "MultiPolygon":
            return GeoAnnotation(**found, polygons=tuple(_geo_polygon(p) for p in coordinates))
        if kind in ("LineString", "Point", "MultiPoint"):
            points = _as_points([coordinates] if kind == "Point" else coordinates)
            if len(points) < (2 if kind == "LineString" else 1):
                raise ValueError(f"too few positions ({len(points)})")
            return GeoAnnotation(**found, coordinates=points)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"feature {index} ({kind}): {exc}") from None
    raise InputError(path, f"feature {index}: unsupported geometry type {kind!r}")


def _geo_polygon(rings: Any) -> GeoPolygon:
    if not isinstance(rings, list) or not rings:
        raise ValueError("a polygon needs an exterior ring")
    exterior, *holes = (_as_points(ring) for ring in rings)
    for ring in (exterior, *holes):
        if len(ring) < 3:
            raise ValueError(f"a polygon ring needs at least 3 positions, got {len(ring)}")
    return GeoPolygon(exterior, tuple(holes))


def _classification(value: Any) -> str | None:
    # QuPath writes {"name": ..., "color": ...}; some converters write the bare name.
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) else None


# --- helpers ---------------------------------------------------------------------------------


def _as_points(value: Any) -> np.ndarray:
    """A read-only float (N, 2) array of x, y; a third (z) coordinate is dropped."""
    if value is None:
        raise ValueError("no points")
    points = np.array(value, dtype=float)
    if points.size == 0:
        points = points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError("points are not a list of [x, y] pairs")
    points = np.ascontiguousarray(points[:, :2])
    if not np.isfinite(points).all():
        raise ValueError("points are not finite numbers")
    points.flags.writeable = False
    return points


def _xy(points: np.ndarray) -> list[float]:
    return points.ravel().tolist()


def _disc(draw: ImageDraw.ImageDraw, centre: np.ndarray, radius: float) -> None:
    x, y = centre
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1, outline=1)


def _canvas(shape: tuple[int, int]) -> Image.Image:
    height, width = shape
    return Image.new("1", (int(width), int(height)))


def _check_size(path: str | Path, size: tuple[int, int], shape: tuple[int, int],
                what: str = "mask is") -> None:
    width, height = size
    if (height, width) != tuple(shape):
        raise MaskSizeError(path, f"{what} {width}x{height} but the image is "
                                  f"{shape[1]}x{shape[0]}")


def _load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, upright by its EXIF orientation, so that truncated files
    fail here, not later."""
    try:
        if Path(path).stat().st_size == 0:
            raise InputError(path, "file is empty")
        with Image.open(path) as image:
            check_size(Path(path), *image.size, smallest=1)  # before decoding: a mask bomb
            # Decodes (a truncated file fails here) and turns the mask upright by its EXIF
            # orientation, as images are read: a mask saved with its image's tag lines up.
            ImageOps.exif_transpose(image, in_place=True)
            return image
    except Image.UnidentifiedImageError:
        raise InputError(path, "not an image file Pillow can read") from None
    except OSError as exc:
        raise InputError(path, f"cannot read image: {exc.strerror or exc}") from None
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"cannot read image: {exc}") from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: "
                               f"{exc.msg}") from None


_MASK_READERS: dict[MaskFormat, Callable[[Path, tuple[int, int]], np.ndarray]] = {
    MaskFormat.BINARY: read_binary_mask,
    MaskFormat.VOC: read_voc_mask,
    MaskFormat.LABELME: lambda path, shape: labelme_mask(read_labelme(path), shape),
    MaskFormat.GEOJSON: lambda path, shape: geojson_mask(read_qupath_geojson(path), shape),
}
