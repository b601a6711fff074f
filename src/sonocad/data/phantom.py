"""Synthetic breast-ultrasound phantoms for unit tests, the demo and explanation checks.

A phantom is a B-mode-like image made from a layered tissue reflectivity map (skin, subcutaneous
fat, a bright fascia, fibroglandular tissue with echogenic lines, pectoral muscle), scatterers
with random phase blurred by a small point-spread function (so speckle is Rayleigh-distributed
and spatially correlated), depth attenuation and log compression. Benign lesions are smooth,
wider-than-tall, circumscribed ovals with posterior enhancement; malignant lesions are irregular,
spiculated, taller-than-wide tendency, with a posterior acoustic shadow. The returned mask is
exactly the region whose reflectivity was lowered.

Phantoms are NOT real data: they never stand in for real images in a benchmark or in any
reported number. They exist so tests, `make demo` and Grad-CAM checks run on a fresh machine.

For one seed, phantoms of different labels share the same background tissue and speckle, so a
"normal" and a lesion phantom differ only at the lesion and below it (its acoustic effects).
`write_phantom_dataset` gives every image its own seed, so no two images share a background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from sonocad.data.sample import CLASS_NAMES
from sonocad.io.atomic import save_png

_MIN_SIDE = 32
_DYNAMIC_RANGE_DB = 50.0  # log-compression window, as on a scanner's display
_TOP_DB = 10.0  # envelope level (dB re mean tissue) that maps to white

_ANGLES = np.linspace(-np.pi, np.pi, 720, endpoint=False)  # where lesion boundaries are sampled


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # uint8 (H, W) grayscale B-mode-like image
    mask: np.ndarray  # bool (H, W), the lesion (all False for "normal")
    label: str  # "normal" | "benign" | "malignant"


def make_phantom(label: str, *, size: tuple[int, int] = (256, 256), seed: int = 0,
                 calipers: bool = False, text: bool = False) -> Phantom:
    """One synthetic B-mode image of `size` = (height, width), deterministic for `seed`.

    `calipers` draws bright '+' marks at the lesion's lateral ends (at a random tissue span for
    "normal"); `text` burns in an annotation such as "L BREAST 2 o'clock". Neither touches the
    mask, as in BUSI, where such marks sit on the images but not in the ground truth.
    """
    if label not in CLASS_NAMES:
        raise ValueError(f"unknown label {label!r} (known: {', '.join(CLASS_NAMES)})")
    height, width = size
    if min(height, width) < _MIN_SIDE:
        raise ValueError(f"phantom size {size} is too small (each side >= {_MIN_SIDE})")
    # Separate streams: the background does not depend on the label or on the overlays.
    tissue_rng, lesion_rng, overlay_rng = (np.random.default_rng(s)
                                           for s in np.random.SeedSequence(seed).spawn(3))
    reflectivity = _tissue(tissue_rng, height, width)
    gain = _depth_gain(tissue_rng, height, width)
    phase_noise = (tissue_rng.standard_normal((height, width))
                   + 1j * tissue_rng.standard_normal((height, width)))
    mask = np.zeros((height, width), dtype=bool)
    if label != "normal":
        mask = _add_lesion(lesion_rng, label, reflectivity, gain)
    image = _b_mode(reflectivity * gain, phase_noise)
    if calipers or text:
        image = _draw_overlays(overlay_rng, image, mask, calipers=calipers, text=text)
    return Phantom(image=image, mask=mask, label=label)


def write_phantom_dataset(root: Path, per_class: int = 4, *, size: tuple[int, int] = (256, 256),
                          seed: int = 0) -> list[Path]:
    """Write `per_class` phantoms per class in the BUSI layout; return the image paths.

    Layout: `root/<class>/<class> (N).png` beside `root/<class>/<class> (N)_mask.png` (L, 0/255),
    N counting from 1.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    root = Path(root)
    seeds = iter(np.random.SeedSequence(seed).generate_state(len(CLASS_NAMES) * per_class))
    paths = []
    for label in CLASS_NAMES:
        for number in range(1, per_class + 1):
            phantom = make_phantom(label, size=size, seed=int(next(seeds)))
            image_path = root / label / f"{label} ({number}).png"
            save_png(image_path, phantom.image)
            save_png(image_path.with_name(f"{label} ({number})_mask.png"), phantom.mask)
            paths.append(image_path)
    return paths


# --- tissue -------------------------------------------------------------------------------

def _tissue(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Reflectivity (1 = typical glandular tissue) of the breast layers, top to bottom."""
    rows = np.arange(height, dtype=float)[:, None]
    skin = _wavy(rng, width, height * rng.uniform(0.025, 0.04), height * 0.005)
    fascia = _wavy(rng, width, height * rng.uniform(0.17, 0.27), height * 0.025)
    muscle = _wavy(rng, width, height * rng.uniform(0.72, 0.84), height * 0.03)

    # Fat: dark lobules with thin bright walls; gland: bright, laterally streaked, with fat islands.
    fat = 0.22 * np.exp(0.3 * _smooth_noise(rng, height, width, (10, 10)))
    fat += 0.8 * _septa(_smooth_noise(rng, height, width, (12, 16)), 0.12)
    gland = 0.8 * np.exp(0.8 * _smooth_noise(rng, height, width, (3, 20)))
    gland += 1.0 * _septa(_smooth_noise(rng, height, width, (6, 20)), 0.12)
    gland *= 1 - 0.75 / (1 + np.exp(-4 * (_smooth_noise(rng, height, width, (10, 18)) - 0.6)))
    pectoral = 0.18 * np.exp(0.3 * _smooth_noise(rng, height, width, (6, 20)))
    pectoral += 0.7 * _septa(_smooth_noise(rng, height, width, (8, 48)), 0.1)  # fibre sheaths

    reflectivity = np.where(rows < fascia, fat, np.where(rows < muscle, gland, pectoral))
    reflectivity[rows < skin] = 0.5
    for depth, strength in ((skin, 2.0), (fascia, 1.6), (muscle, 1.4)):
        _add_line(reflectivity, depth, strength, thickness=1.2)
    for _ in range(rng.integers(3, 7)):  # Cooper's ligaments: short, oblique echogenic lines
        depth = _wavy(rng, width, rng.uniform(fascia.mean(), muscle.mean()), height * 0.04,
                      slope=rng.uniform(-0.25, 0.25))
        _add_line(reflectivity, depth, rng.uniform(0.8, 1.6) * _segment(rng, width), 1.0)
    return reflectivity


def _depth_gain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Attenuation that time-gain compensation leaves over: the top is brighter."""
    depth = np.arange(height, dtype=float)[:, None] / height
    return np.broadcast_to(np.exp(-rng.uniform(1.3, 2.0) * depth), (height, width)).copy()


def _wavy(rng: np.random.Generator, width: int, mean: float, amplitude: float,
          slope: float = 0.0) -> np.ndarray:
    """A smooth random curve y(x) (shape (1, W)): a few low-frequency sines around `mean`."""
    x = np.arange(width, dtype=float) / width
    y = mean + slope * width * (x - 0.5)
    for cycles in (0.5, 1.0, 2.0):
        y += amplitude / cycles * np.sin(2 * np.pi * cycles * x + rng.uniform(0, 2 * np.pi))
    return y[None, :]


def _add_line(reflectivity: np.ndarray, depth: np.ndarray, strength: float | np.ndarray,
              thickness: float) -> None:
    """Add a bright curve at `depth` (1, W) in place; only the rows it reaches are computed."""
    top = max(int(depth.min() - 4 * thickness), 0)
    bottom = min(int(depth.max() + 4 * thickness) + 1, reflectivity.shape[0])
    rows = np.arange(top, bottom, dtype=float)[:, None]
    reflectivity[top:bottom] += strength * np.exp(-0.5 * ((rows - depth) / thickness) ** 2)


def _segment(rng: np.random.Generator, width: int) -> np.ndarray:
    """Soft-ended lateral extent (1, W) of a line that does not cross the whole image."""
    x = np.arange(width, dtype=float)
    start, length = rng.uniform(-0.2, 0.7) * width, rng.uniform(0.25, 0.7) * width
    soft = 0.03 * width
    inside = 1 / (1 + np.exp(-(x - start) / soft)) * 1 / (1 + np.exp((x - start - length) / soft))
    return inside[None, :]


def _septa(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin bright curves along the zero crossings of a smooth noise field."""
    return np.exp(-((noise / width) ** 2))


def _smooth_noise(rng: np.random.Generator, height: int, width: int,
                  scale: tuple[int, int]) -> np.ndarray:
    """Unit-variance noise with features about `scale` = (rows, columns) pixels across."""
    coarse = rng.standard_normal((height // scale[0] + 2, width // scale[1] + 2)).astype(np.float32)
    fine = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return (fine - fine.mean()) / (fine.std() + 1e-9)


# --- lesion -------------------------------------------------------------------------------

def _add_lesion(rng: np.random.Generator, label: str, reflectivity: np.ndarray,
                gain: np.ndarray) -> np.ndarray:
    """Darken a lesion into `reflectivity`, put its posterior effect in `gain`; return its mask."""
    height, width = reflectivity.shape
    side = min(height, width)
    if label == "benign":
        half_width = side * rng.uniform(0.09, 0.17)
        half_height = half_width * rng.uniform(0.4, 0.7)  # wider than tall
        radius = _radius_benign(rng)
    else:
        half_width = side * rng.uniform(0.08, 0.15)
        half_height = half_width * rng.uniform(0.85, 1.4)  # taller-than-wide tendency
        radius = _radius_malignant(rng)
    reach = radius.max()  # keeps the whole lesion inside the image
    centre_y = rng.uniform(max(0.3 * height, reach * half_height + 2),
                           min(0.62 * height, height - reach * half_height - 2))
    centre_x = rng.uniform(reach * half_width + 2, width - reach * half_width - 2)

    y, x = np.mgrid[0:height, 0:width].astype(float)
    dy, dx = (y - centre_y) / half_height, (x - centre_x) / half_width
    boundary = np.interp(np.arctan2(dy, dx), _ANGLES, radius, period=2 * np.pi)
    rho = np.hypot(dx, dy) / boundary  # <= 1 inside the lesion
    mask = rho <= 1.0
    if label == "benign":
        interior = np.exp(rng.uniform(np.log(0.015), np.log(0.2)))  # anechoic cyst to hypoechoic
        reflectivity += 0.9 * np.exp(-0.5 * ((rho - 1.04) / 0.025) ** 2)  # thin capsule
        posterior = rng.uniform(0.3, 2.0)  # enhancement, strong behind cysts
    else:
        interior = rng.uniform(0.04, 0.1) * np.exp(0.4 * _smooth_noise(rng, height, width, (5, 5)))
        reflectivity += 0.5 * np.exp(-0.5 * ((rho - 1.15) / 0.1) ** 2)  # echogenic halo
        posterior = -rng.uniform(0.65, 0.9)  # shadow
    reflectivity[mask] = np.broadcast_to(interior, mask.shape)[mask]
    gain *= 1 + posterior * _below(mask, softness=0.02 * side)
    return mask


def _radius_benign(rng: np.random.Generator) -> np.ndarray:
    """Boundary radius on `_ANGLES` of a smooth oval with at most gentle lobulation."""
    return 1 + sum(rng.uniform(0, 0.05) * np.cos(k * _ANGLES + rng.uniform(0, 2 * np.pi))
                   for k in (2, 3))


def _radius_malignant(rng: np.random.Generator) -> np.ndarray:
    """Boundary radius on `_ANGLES`, modulated by random harmonics (irregular) and narrow
    spikes (spiculated)."""
    radius = 0.85 + sum(rng.uniform(0.04, 0.16) / np.sqrt(k - 1)
                        * np.cos(k * _ANGLES + rng.uniform(0, 2 * np.pi)) for k in range(2, 8))
    for _ in range(rng.integers(5, 12)):
        gap = np.angle(np.exp(1j * (_ANGLES - rng.uniform(0, 2 * np.pi))))  # wrapped distance
        radius += rng.uniform(0.15, 0.45) * np.exp(-0.5 * (gap / rng.uniform(0.04, 0.08)) ** 2)
    return np.clip(radius, 0.3, 1.8)  # the cap keeps a lesion placeable in a small image


def _below(mask: np.ndarray, softness: float) -> np.ndarray:
    """Weight in [0, 1] of the region behind (deeper than) the lesion, soft at its sides."""
    rows = np.arange(mask.shape[0])[:, None]
    covered = mask.any(axis=0)
    bottom = np.where(covered, mask.shape[0] - 1 - np.argmax(mask[::-1], axis=0), mask.shape[0])
    # The effect builds up with depth behind each column; a lateral blur softens its sides.
    behind = 1 - np.exp(-np.maximum(rows - bottom[None, :], 0) / (2 * softness))
    return ndimage.gaussian_filter1d(behind, softness, axis=1)


# --- imaging ------------------------------------------------------------------------------

def _b_mode(amplitude: np.ndarray, phase_noise: np.ndarray) -> np.ndarray:
    """Scatter, blur by the point-spread function, detect the envelope, log-compress to uint8.

    Blurring complex Gaussian scatterers keeps them complex Gaussian, so the envelope is Rayleigh
    in uniform tissue, correlated over the PSF (wider laterally, as with a linear probe); a small
    blur after detection then stands in for the scanner's speckle reduction.
    """
    field = amplitude * phase_noise
    for axis, sigma in ((0, 0.9), (1, 1.6)):
        kernel = _gaussian_kernel(sigma)
        # Unit energy keeps E|field|^2 = 2 * amplitude^2 after blurring.
        field = ndimage.convolve1d(field, kernel / np.sqrt(np.sum(kernel**2)), axis=axis,
                                   mode="reflect")
    envelope = ndimage.gaussian_filter(np.abs(field) / np.sqrt(2), (0.6, 1.0))
    envelope_db = 20 * np.log10(envelope + 1e-6)
    scaled = (envelope_db - _TOP_DB + _DYNAMIC_RANGE_DB) / _DYNAMIC_RANGE_DB
    return np.clip(np.rint(255 * scaled), 0, 255).astype(np.uint8)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    offsets = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2)


# --- overlays -----------------------------------------------------------------------------

def _draw_overlays(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, *,
                   calipers: bool, text: bool) -> np.ndarray:
    """Burn calipers and an annotation into a copy of `image`, as scanners do."""
    height, width = image.shape
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # crisp, not anti-aliased, like a scanner's burned-in text
    if calipers:
        arm = max(2, min(height, width) // 64)
        for y, x in _caliper_points(rng, mask):
            draw.line([(x - arm, y), (x + arm, y)], fill=255)
            draw.line([(x, y - arm), (x, y + arm)], fill=255)
    if text:
        note = f"{rng.choice(['L', 'R'])} BREAST {rng.integers(1, 13)} o'clock"
        draw.text((0.04 * width, 0.9 * height), note, fill=int(rng.integers(220, 256)))
    return np.asarray(canvas).copy()


def _caliper_points(rng: np.random.Generator, mask: np.ndarray) -> list[tuple[int, int]]:
    """The lesion's lateral ends on its middle row; a random tissue span when there is none."""
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        y = int(rng.uniform(0.3, 0.6) * height)
        left = int(rng.uniform(0.2, 0.45) * width)
        return [(y, left), (y, left + int(rng.uniform(0.1, 0.3) * width))]
    y = int(rows[rows.size // 2])
    columns = np.flatnonzero(mask[y])
    return [(y, int(columns[0])), (y, int(columns[-1]))]
