"""A synthetic biopsy series for the example in docs/registration.md: phantom pre-fire and
post-fire images with the needle drawn, their Labelme marks, a QuPath GeoJSON of each core and
the CSV that `sonocad register --batch` reads. NOT real data: it exists to run the pipeline.

Each case starts from the truth, a tumour in the body with a core cut through it along the
needle: the tumour is darkened into the ultrasound image as an ellipse wider than the tract,
and the part of it inside the core goes onto the slide. A correct registration therefore puts
the mask where the image is dark along the tract.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from sonocad.data.phantom import make_phantom
from sonocad.io.annotations import Shape, write_labelme
from sonocad.io.atomic import save_png, write_json, write_text
from sonocad.registration.fields import DEFAULT_LENGTH_MM
from sonocad.registration.geometry import CoreAxis, Tract, apply, needle_width_mm

SPACING_MM = 0.2  # a 160-pixel image spans 32 mm: room for the 22 mm tract
WSI_MPP = 2.0  # coarse slide pixels keep the GeoJSON small
SHRINKAGE = 0.1
CORE_WIDTH_MM = 1.2  # narrower than the 16G tract, as a real core is
_TUMOUR_GREY = 0.3  # tumour echo relative to the tissue around it


def write_example(root: str | Path, *, biopsies: int = 8, size: int = 160,
                  seed: int = 0) -> Path:
    """Write `biopsies` cases into `root` (two per patient; every third core without cancer)
    and return the path of their biopsies.csv."""
    root = Path(root)
    rows = [_write_case(root, index, size, np.random.default_rng([seed, index]))
            for index in range(biopsies)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(root / "biopsies.csv", buffer.getvalue())
    return root / "biopsies.csv"


def _write_case(root: Path, index: int, size: int, rng: np.random.Generator) -> dict[str, str]:
    name = f"b{index + 1:02d}"
    # The needle comes in from the left or the right, 10 to 30 degrees down.
    slope = rng.uniform(10, 30)
    tip = np.array([rng.uniform(0.08, 0.18) * size, rng.uniform(0.2, 0.35) * size])
    if index % 2:
        slope, tip[0] = 180 - slope, size - 1 - tip[0]
    direction = np.array([math.cos(math.radians(slope)), math.sin(math.radians(slope))])
    tract = Tract(tip, direction, DEFAULT_LENGTH_MM, needle_width_mm(16), (SPACING_MM,) * 2)
    fired_tip = apply(tract.core_to_image, np.zeros((1, 2)))[0]

    core_length = rng.uniform(17, 21)  # body mm
    tumour = None
    if index % 3 != 2:
        # centre (u, v) and half-axes along and across the core, in body mm
        tumour = (rng.uniform(6, core_length - 6), rng.uniform(-0.2, 0.2),
                  rng.uniform(2.5, 4.5), rng.uniform(1.5, 3.0))

    pixels = make_phantom("normal", size=(size, size),
                          seed=int(rng.integers(2**31))).image.astype(float)
    if tumour is not None:
        pixels[_inside_tumour(tract, tumour, (size, size))] *= _TUMOUR_GREY
    for suffix, needle_end, marks in (
            ("pre", tip, [Shape("tip", "point", [tip]),
                          Shape("needle", "line", [tip - 10 * direction, tip])]),
            ("post", fired_tip, [Shape("tip", "point", [fired_tip])])):
        save_png(root / f"{name}_{suffix}.png", _with_needle(pixels, needle_end, direction))
        write_labelme(root / f"{name}_{suffix}.json", f"{name}_{suffix}.png", (size, size), marks)

    write_json(root / f"{name}.geojson", _slide(rng, core_length, tumour))
    return {"id": name, "patient_id": f"P{index // 2 + 1}", "image": f"{name}_pre.png",
            "labelme": f"{name}_pre.json", "post_fire": f"{name}_post.json",
            "geojson": f"{name}.geojson", "spacing": f"{SPACING_MM:g}",
            "wsi_mpp": f"{WSI_MPP:g}", "shrinkage": f"{SHRINKAGE:g}"}


def _inside_tumour(tract: Tract, tumour: tuple[float, float, float, float],
                   shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside the tumour ellipse, found in core coordinates."""
    u0, v0, along, across = tumour
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1)
    u, v = apply(np.linalg.inv(tract.core_to_image), pixels).T
    return (((u - u0) / along) ** 2 + ((v - v0) / across) ** 2 <= 1).reshape(shape)


def _with_needle(pixels: np.ndarray, tip: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The image with a bright needle shaft from beyond the image edge up to `tip`."""
    image = PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    start = tip - 2 * max(image.size) * direction
    ImageDraw.Draw(image).line([*start, *tip], fill=255, width=2)
    return np.asarray(image)


def _slide(rng: np.random.Generator, core_length: float,
           tumour: tuple[float, float, float, float] | None) -> dict:
    """The QuPath export of a slide with the core lying at a random place and angle."""
    angle = rng.uniform(0, 2 * math.pi)
    dyed_end = rng.uniform(2000, 6000, size=2)
    length_px = core_length * (1 - SHRINKAGE) * 1000 / WSI_MPP
    axis = CoreAxis(dyed_end, dyed_end + length_px * np.array([math.cos(angle), math.sin(angle)]),
                    WSI_MPP, SHRINKAGE)
    to_slide = np.linalg.inv(axis.slide_to_core)
    half = CORE_WIDTH_MM / 2
    outline = [[0, -half], [core_length, -half], [core_length, half], [0, half]]
    features = [_feature("Polygon", [_ring(apply(to_slide, outline))], name="core"),
                _feature("Point", apply(to_slide, [[0.2, 0.0]])[0].tolist(), name="dye")]
    if tumour is not None:
        u0, v0, along, across = tumour
        turn = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        # the tumour ellipse cut to the core's width: what the pathologist sees on the slide
        cut = np.stack([u0 + along * np.cos(turn),
                        np.clip(v0 + across * np.sin(turn), -0.9 * half, 0.9 * half)], axis=1)
        features.append(_feature("Polygon", [_ring(apply(to_slide, cut))],
                                 classification={"name": "Tumor", "color": [200, 0, 0]}))
    return {"type": "FeatureCollection", "features": features}


def _feature(kind: str, coordinates: list, **properties: object) -> dict:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coordinates},
            "properties": {"objectType": "annotation", **properties}}


def _ring(points: np.ndarray) -> list[list[float]]:
    """A closed GeoJSON ring."""
    return [*points.tolist(), points[0].tolist()]
