"""Exact and near-duplicate images: one scan saved twice, resized, re-cropped or annotated.

Public datasets repeat scans (BUSI: about 19 % of its images), often re-cropped to another
field of view or zoom, which a whole-image perceptual hash misses. So, in three steps:

1. Per image (`hash_image`): the sha256 of the decoded pixels; perceptual hashes (pHash) of
   the whole image and of squares cut from it (centred and shifted left/right), so that a copy
   cut narrower still hashes close to one of the original's squares; a small grey thumbnail.
2. Candidates: pairs whose closest hashes differ in at most `max_distance` of 64 bits, each
   image with its `MAX_PARTNERS` nearest at most (any more are further re-crops of one scan,
   which the groups join through the nearer ones).
3. Verification: the central part of each image of a candidate pair is searched in the other
   over every shift and over zooms 1 to 0.63 (FFT cross-correlation of band-passed thumbnails);
   the pair is a near-duplicate when the best normalised cross-correlation reaches
   `min_correlation`. Band-passing removes the depth-brightness ramp every scan shares, so
   what must match is tissue texture.

Groups are the connected components of identical-pixel pairs and verified pairs.

Each step shows its progress. Memory grows by about 20 KB per image (beyond a fixed cache), not
with the number of pairs: hashes are compared in blocks, and verification holds one zoom's
templates at a time. Pairs within `max_distance` grow with the square of the image count
(random pairs pass at about 1 in 4,000, BUSI's at 1 in 250); the nearest-partner cap keeps the
verified candidates, and so the time, growing with the count itself.

Thresholds were set on BUSI by looking at pairs side by side: re-cropped, resized or annotated
copies of a scan score 0.89-1.0; nearby frames of one lesion 0.58-0.84 (those at 0.8 and above
join the group); images of different patients at most 0.72, among 34,000 loosely matched
pairs checked while calibrating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
import scipy.fft
from PIL import Image as PILImage
from scipy.ndimage import gaussian_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sonocad.data.sample import Sample
from sonocad.progress import progress as show_progress

MAX_DISTANCE = 14  # pHash bits (of 64) for a pair to be verified at all
MAX_PARTNERS = 8  # and only with one of its nearest images (by those bits)
MIN_CORRELATION = 0.8  # verified near-duplicate

_HASH_HEIGHT = 128  # images are hashed from a thumbnail this high (pHash uses 32 x 32 anyway)
_THUMB_HEIGHT = 64  # verification runs on thumbnails this high
# Hashed squares: (side as a fraction of the shorter image side, horizontal position 0..1).
_SQUARES = ((1.0, 0.5), (0.8, 0.25), (0.8, 0.5), (0.8, 0.75), (0.6, 0.5))
_TEMPLATE_FRACTION = 0.8  # central part of one image searched in the other (height and width)
_ZOOMS = tuple(2 ** (-k / 24) for k in range(17))  # 1.0 down to 0.63 in 3 % steps
_BAND = (0.7, 2.5)  # band-pass: Gaussian sigmas (thumbnail pixels) of the two blurs subtracted
_BLOCK = 1024  # images per side of a block of the pairwise hash distances (10 MB of buffers)
# Verification keeps images' search structures (about 100 KB each) for every zoom up to this
# many bytes, and rebuilds the others at each zoom, so that memory does not grow 100 KB an image.
_KEPT_BYTES = 192 * 2**20


@dataclass(frozen=True, eq=False)
class ImageHashes:
    """What duplicate detection keeps of one image; `data check` can compute it while it reads."""

    sha256: str  # of the decoded pixels with their shape and dtype: equal means identical
    phashes: tuple[str, ...]  # hex pHash of the whole image, then of each hashed square
    thumbnail: np.ndarray  # uint8 grey, _THUMB_HEIGHT rows, aspect kept


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that show the same scan; a split must keep them in one subset."""

    image_ids: tuple[str, ...]  # sorted
    exact: bool  # all members have identical pixels
    labels: tuple[str, ...]  # the members' distinct labels, sorted

    @property
    def cross_label(self) -> bool:
        """The same scan filed under two labels (e.g. BUSI's benign and malignant folders)."""
        return len(self.labels) > 1

    def to_dict(self) -> dict:
        return {"image_ids": list(self.image_ids), "exact": self.exact,
                "labels": list(self.labels), "cross_label": self.cross_label}


def hash_image(pixels: np.ndarray) -> ImageHashes:
    """Hashes and thumbnail of one image's pixels (grey or RGB, uint8 or uint16)."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(pixels.tobytes())
    small = _to_height(PILImage.fromarray(_grey(pixels)), _HASH_HEIGHT)
    phashes = [str(imagehash.phash(view)) for view in (small, *_squares(small))]
    thumbnail = np.asarray(_to_height(small, _THUMB_HEIGHT))
    return ImageHashes(digest.hexdigest(), tuple(phashes), thumbnail)


def hash_images(samples: Iterable[Sample],
                progress: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None,
                ) -> dict[str, ImageHashes]:
    """`hash_image` of every sample's image, by image id; `progress` wraps the samples (a
    progress bar by default)."""
    shown = (progress(samples) if progress
             else show_progress(samples, "reading images", unit="images"))
    return {s.image_id: hash_image(s.load_image().pixels) for s in shown}


def find_duplicate_groups(samples: Sequence[Sample], *, max_distance: int = MAX_DISTANCE,
                          min_correlation: float = MIN_CORRELATION,
                          hashes: Mapping[str, ImageHashes] | None = None,
                          progress: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None,
                          ) -> list[DuplicateGroup]:
    """Groups (two or more images) of exact and near-duplicates, sorted by first image id.

    `hashes` may hold precomputed `hash_image` results by image id; other images are read.
    """
    known = dict(hashes or {})
    known.update(hash_images([s for s in samples if s.image_id not in known], progress))
    found = [known[s.image_id] for s in samples]
    pairs = [pair for pair, _ in near_duplicate_pairs(found, max_distance=max_distance,
                                                      min_correlation=min_correlation)]
    return _groups(samples, found, pairs)


def near_duplicate_pairs(hashes: Sequence[ImageHashes], *, max_distance: int = MAX_DISTANCE,
                         min_correlation: float = MIN_CORRELATION,
                         ) -> list[tuple[tuple[int, int], float]]:
    """Index pairs (i < j) of duplicates with their correlation (1.0 for identical pixels)."""
    by_digest: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        by_digest.setdefault(h.sha256, []).append(i)
    exact = {(a, b) for same in by_digest.values() for a in same for b in same if a < b}
    candidates = [p for p in candidate_pairs(hashes, max_distance) if p not in exact]
    scores = correlations(hashes, candidates)
    return ([(p, 1.0) for p in sorted(exact)]
            + [(p, float(s)) for p, s in zip(candidates, scores) if s >= min_correlation])


def candidate_pairs(hashes: Sequence[ImageHashes], max_distance: int) -> list[tuple[int, int]]:
    """Pairs (i < j), sorted, whose closest perceptual hashes (any view against any view) are
    within `max_distance` bits, and where one image is among the other's `MAX_PARTNERS`
    nearest by that distance: verification then grows with the number of images, not with its
    square (every verified BUSI pair is among both its images' 5 nearest)."""
    if len(hashes) < 2:
        return []
    views = np.array([[int(h, 16) for h in item.phashes] for item in hashes], dtype=np.uint64)
    starts = range(0, len(views), _BLOCK)
    blocks = [(top, left) for top in starts for left in starts if left >= top]  # i < j only
    firsts, seconds, distances = [], [], []
    for top, left in show_progress(blocks, "finding duplicate candidates", unit="blocks"):
        closest = _closest_bits(views[top:top + _BLOCK], views[left:left + _BLOCK])
        rows, cols = np.nonzero(closest <= max_distance)
        keep = rows + top < cols + left
        rows, cols = rows[keep], cols[keep]
        firsts.append(rows + top)
        seconds.append(cols + left)
        distances.append(closest[rows, cols])
    first, second, distance = (np.concatenate(parts) for parts in (firsts, seconds, distances))
    near = _among_nearest(first, second, distance, MAX_PARTNERS)
    return sorted(zip(first[near].tolist(), second[near].tolist()))


def _among_nearest(first: np.ndarray, second: np.ndarray, distance: np.ndarray,
                   k: int) -> np.ndarray:
    """Per pair: whether either image is among the other's k nearest (ties by the lower
    index), so that at most k pairs per image are kept."""
    owner, other = np.concatenate([first, second]), np.concatenate([second, first])
    order = np.lexsort((other, np.concatenate([distance, distance]), owner))
    ranked = owner[order]
    rank = np.arange(len(order)) - np.searchsorted(ranked, ranked, side="left")
    near = np.zeros(len(order), dtype=bool)
    near[order] = rank < k
    return near[:len(first)] | near[len(first):]


def _closest_bits(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """uint8 (len(rows), len(cols)): the fewest differing bits between any view of a row image
    and any view of a column image. Buffers are reused: a block is all this holds."""
    closest = np.full((len(rows), len(cols)), 64, dtype=np.uint8)
    differing = np.empty(closest.shape, dtype=np.uint64)
    bits = np.empty(closest.shape, dtype=np.uint8)
    views_per_image = rows.shape[1]
    for a in range(views_per_image):
        for b in range(views_per_image):
            np.bitwise_xor(rows[:, a, None], cols[None, :, b], out=differing)
            np.bitwise_count(differing, out=bits)
            np.minimum(closest, bits, out=closest)
    return closest


def correlations(hashes: Sequence[ImageHashes], pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per pair, the best normalised cross-correlation of either image's central part found
    anywhere in the other at any of the zooms.

    Memory grows by a template (about 10 KB) per image however many pairs there are: one
    zoom's templates are held at a time, and images' search structures (about 100 KB each) up
    to `_KEPT_BYTES`; the others are rebuilt at each zoom.
    """
    best = np.full(len(pairs), -1.0)
    partners: dict[int, list[tuple[int, int]]] = {}  # image -> [(other image, pair index)]
    for k, (a, b) in enumerate(pairs):
        partners.setdefault(a, []).append((b, k))
        partners.setdefault(b, []).append((a, k))
    kept: dict[int, _Searchable] = {}
    kept_bytes = 0
    templates: dict[int, np.ndarray] = {}
    for zoom in show_progress(_ZOOMS, "comparing duplicate candidates at each zoom",
                              unit="zooms"):
        templates.clear()  # the last zoom's go before this zoom's are made
        templates.update((i, _template(hashes[i].thumbnail, zoom)) for i in partners)
        for i, others in partners.items():
            searched = kept.get(i) or _Searchable(_band_pass(hashes[i].thumbnail))
            if i not in kept and kept_bytes + searched.nbytes <= _KEPT_BYTES:
                kept[i], kept_bytes = searched, kept_bytes + searched.nbytes
            scores = searched.match([templates[j] for j, _ in others])
            for (_, k), score in zip(others, scores):
                best[k] = max(best[k], score)
    return best


class _Searchable:
    """One band-passed thumbnail, ready to be searched for many templates by FFT."""

    def __init__(self, image: np.ndarray) -> None:
        self.shape = image.shape
        self.fft_shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in image.shape)
        self.spectrum = scipy.fft.rfft2(image, s=self.fft_shape)
        # Integral images give each window's sum and sum of squares for the NCC denominator.
        values = image.astype(np.float64)
        self.sums, self.squares = _integral(values), _integral(values * values)

    @property
    def nbytes(self) -> int:
        return self.spectrum.nbytes + self.sums.nbytes + self.squares.nbytes

    def match(self, templates: Sequence[np.ndarray]) -> list[float]:
        """Best NCC of each (zero-mean, unit-norm) template over all shifts; -1 if too big."""
        height, width = self.shape
        fits = [k for k, t in enumerate(templates) if t.shape[0] <= height and t.shape[1] <= width]
        scores = [-1.0] * len(templates)
        if not fits:
            return scores
        stack = np.zeros((len(fits), *self.fft_shape), dtype=np.float32)
        for row, k in enumerate(fits):
            stack[row, :templates[k].shape[0], :templates[k].shape[1]] = templates[k]
        # Cross-correlation; the shifts read below keep the template inside, so nothing wraps.
        # One thread: these transforms are 64 x ~100, where threads cost more than they give
        # (BUSI's search took 1.7 x as long with workers=-1; benchmarks/data_speed.py).
        spectra = np.conj(scipy.fft.rfft2(stack)) * self.spectrum
        products = scipy.fft.irfft2(spectra, s=self.fft_shape)
        # Templates of one shape share their windows' sums: score them together.
        rows_of_shape: dict[tuple[int, int], list[int]] = {}
        for row, k in enumerate(fits):
            rows_of_shape.setdefault(templates[k].shape, []).append(row)
        for (th, tw), rows in rows_of_shape.items():
            n = th * tw
            sums, squares = self._windows(th, tw)
            spread = squares - sums * sums / n  # n x the window's variance
            product = products[rows, :spread.shape[0], :spread.shape[1]]
            # Flat windows (black margins) have no texture to match: score them 0.
            ncc = np.where(spread > 1e-6 * n, product / np.sqrt(np.maximum(spread, 1e-12)), 0.0)
            for row, score in zip(rows, ncc.max(axis=(1, 2))):
                scores[fits[row]] = float(score)
        return scores

    def _windows(self, th: int, tw: int) -> tuple[np.ndarray, np.ndarray]:
        """Sum and sum of squares of every th x tw window lying inside the image."""
        vh, vw = self.shape[0] - th + 1, self.shape[1] - tw + 1

        def box(integral: np.ndarray) -> np.ndarray:
            return (integral[th:th + vh, tw:tw + vw] - integral[:vh, tw:tw + vw]
                    - integral[th:th + vh, :vw] + integral[:vh, :vw])

        return box(self.sums), box(self.squares)


def _integral(values: np.ndarray) -> np.ndarray:
    """Summed-area table with a leading row and column of zeros (each window's sum in O(1))."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    np.cumsum(values, axis=0, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


def _template(thumbnail: np.ndarray, zoom: float) -> np.ndarray:
    """The central part of the thumbnail shrunk by `zoom`, band-passed, zero-mean, unit norm."""
    image = _band_pass(np.asarray(_to_height(PILImage.fromarray(thumbnail),
                                             round(_THUMB_HEIGHT * zoom))))
    h, w = image.shape
    th, tw = max(2, round(h * _TEMPLATE_FRACTION)), max(2, round(w * _TEMPLATE_FRACTION))
    top, left = (h - th) // 2, (w - tw) // 2
    part = image[top:top + th, left:left + tw]
    part = part - part.mean()
    norm = float(np.linalg.norm(part))
    return part / norm if norm > 0 else part


def _band_pass(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return gaussian_filter(image, _BAND[0]) - gaussian_filter(image, _BAND[1])


def _squares(image: PILImage.Image) -> list[PILImage.Image]:
    width, height = image.size
    out = []
    for fraction, position in _SQUARES:
        side = max(1, round(fraction * min(width, height)))
        left, top = round((width - side) * position), (height - side) // 2
        out.append(image.crop((left, top, left + side, top + side)))
    return out


def _to_height(image: PILImage.Image, height: int) -> PILImage.Image:
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), PILImage.Resampling.BILINEAR)


def _grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 grey: RGB by luma weights; 16-bit data stretched from its own min..max."""
    values = pixels.astype(np.float32)
    if values.ndim == 3:
        values = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if pixels.dtype != np.uint8:
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / (high - low)) if high > low else values * 0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _groups(samples: Sequence[Sample], hashes: Sequence[ImageHashes],
            pairs: Sequence[tuple[int, int]]) -> list[DuplicateGroup]:
    n = len(samples)
    rows, cols = [a for a, _ in pairs], [b for _, b in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(component):
        members.setdefault(int(c), []).append(i)
    groups = [
        DuplicateGroup(
            image_ids=tuple(sorted(samples[i].image_id for i in idx)),
            exact=len({hashes[i].sha256 for i in idx}) == 1,
            labels=tuple(sorted({samples[i].label for i in idx if samples[i].label})))
        for idx in members.values() if len(idx) > 1]
    return sorted(groups, key=lambda g: g.image_ids)
