"""Bad masks and big datasets for `sonocad data check` / `data split`, made at test time
(issue 28 items 19, 20, 23).

A mask that marks (almost) the whole image as lesion, or whose background is not 0, is an
error naming the file; an RGBA mask whose transparent area is white is read by its alpha
channel, the same in check and in training (`Sample.load_mask`). Masks are turned upright by
their EXIF orientation as images are; an image and a mask whose orientations differ get one
line. Every case: the exit code, one line naming the file, the good sample beside it not named,
the inputs byte for byte as they were. The duplicate search keeps its memory bounded as the
number of images and candidate pairs grows (traced allocations: no timing).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags
from PIL import Image as PILImage

from conftest import EXIT_OK, EXIT_SOME_FAILED, tree_digest
from sonocad.cli import main
from sonocad.data import duplicates
from sonocad.data.adapters import open_dataset
from sonocad.data.duplicates import ImageHashes, candidate_pairs, correlations
from sonocad.data.phantom import make_phantom
from sonocad.data.sample import Sample
from sonocad.data.split import SplitFile, hold_out_scanner, make_split

SIZE = (48, 64)  # height, width of every image (not square: a quarter turn changes its size)

Pixels = Callable[[np.ndarray], np.ndarray]  # lesion (bool H x W) -> the mask file's pixels


def _phantom(seed: int, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    phantom = make_phantom("benign", size=size, seed=seed)
    return phantom.image, phantom.mask


def _save(path: Path, pixels: np.ndarray, orientation: int = 1, **options) -> None:
    """Save `pixels` so that they read upright: stored turned back, with the EXIF tag."""
    _store(path, _turned_back(pixels, orientation), orientation, **options)


def _store(path: Path, pixels: np.ndarray, orientation: int = 1, **options) -> None:
    """Save `pixels` as they are, tagged with EXIF `orientation` (none for 1)."""
    if orientation != 1:
        exif = PILImage.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        options["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path, **options)


# What undoes each EXIF orientation that ImageOps.exif_transpose applies.
_TURNED_BACK = {2: PILImage.Transpose.FLIP_LEFT_RIGHT, 3: PILImage.Transpose.ROTATE_180,
                6: PILImage.Transpose.ROTATE_90, 8: PILImage.Transpose.ROTATE_270}


def _turned_back(pixels: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 1:
        return pixels
    return np.asarray(PILImage.fromarray(pixels).transpose(_TURNED_BACK[orientation]))


def _folder(root: Path, bad_mask: Callable[[Path, np.ndarray], None], *,
            image_name: str = "bad.png", image_orientation: int = 1,
            size: tuple[int, int] = SIZE) -> tuple[Path, np.ndarray]:
    """A `folder` dataset: a good benign image with its mask, and `bad.*` whose mask file
    `bad_mask(masks_folder, lesion)` writes. Returns the root and bad's upright lesion."""
    good_image, good_lesion = _phantom(1)
    _save(root / "images" / "benign" / "good.png", good_image)
    _save(root / "masks" / "good.png", good_lesion.astype(np.uint8) * 255)
    image, lesion = _phantom(2, size)
    _save(root / "images" / "benign" / image_name, image, image_orientation)
    bad_mask(root / "masks", lesion)
    return root, lesion


def _check(root: Path, capsys: pytest.CaptureFixture) -> tuple[int, list[str], dict]:
    """Exit code, the report's problem lines, and its JSON (written outside the dataset)."""
    report = root.parent / f"{root.name}-report.json"
    code = main(["data", "check", str(root), "--json", str(report)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = [line.strip() for line in out.splitlines()
             if line.strip().startswith(("error:", "warning:"))]
    return code, lines, json.loads(report.read_text())


def _png_mask(name: str, pixels: Pixels, **options) -> Callable[[Path, np.ndarray], None]:
    def write(masks: Path, lesion: np.ndarray) -> None:
        _save(masks / name, pixels(lesion), **options)
    return write


def _grey(background: int, lesion_value: int = 255) -> Pixels:
    return lambda lesion: np.where(lesion, lesion_value, background).astype(np.uint8)


def _rgb(background: tuple[int, int, int]) -> Pixels:
    return lambda lesion: np.where(lesion[..., None], np.uint8(255),
                                   np.array(background, np.uint8)).astype(np.uint8)


def _covering(share: float) -> Pixels:
    """White over the top `share` of the rows (whatever the lesion)."""
    def pixels(lesion: np.ndarray) -> np.ndarray:
        out = np.zeros(lesion.shape, np.uint8)
        out[:round(share * lesion.shape[0])] = 255
        return out
    return pixels


def _indexed(lesion: np.ndarray, palette: list[int]) -> PILImage.Image:
    """A palette image: index 1 on the lesion, 0 around it."""
    image = PILImage.frombytes("P", lesion.shape[::-1], lesion.astype(np.uint8).tobytes())
    image.putpalette(palette + [0] * (768 - len(palette)))
    return image


def _palette(background_rgb: tuple[int, int, int]) -> Callable[[Path, np.ndarray], None]:
    def write(masks: Path, lesion: np.ndarray) -> None:
        masks.mkdir(parents=True, exist_ok=True)
        _indexed(lesion, [*background_rgb, 255, 255, 255]).save(masks / "bad.png")
    return write


def _labelme_everything(root: Path) -> Path:
    """A Labelme folder: a good polygon beside a rectangle over the whole of bad.png."""
    height, width = SIZE
    for name, points in (("good", [[10, 10], [30, 10], [20, 30]]),
                         ("bad", [[0, 0], [width - 1, height - 1]])):
        image, _ = _phantom(3 if name == "good" else 4)
        _save(root / f"{name}.png", image)
        shape_type = "polygon" if name == "good" else "rectangle"
        (root / f"{name}.json").write_text(json.dumps({
            "shapes": [{"label": "benign", "points": points, "shape_type": shape_type}],
            "imagePath": f"{name}.png", "imageHeight": height, "imageWidth": width}))
    return root / "bad.json"


def _voc_everything(root: Path) -> Path:
    """A VOC folder: a good class mask beside one whose every pixel is class 1."""
    (root / "class_names.txt").write_text("_background_\nbenign\n")
    for name in ("good", "bad"):
        image, lesion = _phantom(5 if name == "good" else 6)
        _save(root / "JPEGImages" / f"{name}.png", image)
        classes = np.ones(SIZE, np.uint8) if name == "bad" else lesion.astype(np.uint8)
        _save(root / "SegmentationClass" / f"{name}.png", classes)
    return root / "SegmentationClass" / "bad.png"


# --- item 19: masks that mark everything lesion ----------------------------------------------

# (kind, mask writer, what the one error line says)
EVERYTHING_LESION = [
    ("all-255 grey PNG", _png_mask("bad.png", lambda lesion: np.full(lesion.shape, 255,
                                                                     np.uint8)),
     "marks 100% of the image as lesion"),
    ("grey-128 background", _png_mask("bad.png", _grey(128)), "commonest grey level is 128"),
    ("grey-1 background", _png_mask("bad.png", _grey(1)), "commonest grey level is 1"),
    ("grey-128 background with grey-200 lesion", _png_mask("bad.png", _grey(128, 200)),
     "commonest grey level is 128"),
    ("grey-128 background, RGB", _png_mask("bad.png", _rgb((128, 128, 128))),
     "commonest grey level is 128"),
    ("red background, RGB", _png_mask("bad.png", _rgb((255, 0, 0))),
     "commonest grey level is 76"),
    ("grey background, palette PNG", _palette((90, 90, 90)), "commonest grey level is 90"),
    ("all-white JPEG", _png_mask("bad.jpg", lambda lesion: np.full(lesion.shape, 255,
                                                                   np.uint8), quality=80),
     "marks 100% of the image as lesion"),
    ("all-ones 1-bit PNG", _png_mask("bad.png", lambda lesion: np.ones(lesion.shape, bool)),
     "marks 100% of the image as lesion"),
    ("opaque white RGBA", _png_mask("bad.png", lambda lesion: np.full((*lesion.shape, 4), 255,
                                                                      np.uint8)),
     "commonest grey level is 255"),
    ("95 % white", _png_mask("bad.png", _covering(0.95)), "marks 96% of the image as lesion"),
]


@pytest.mark.parametrize(("kind", "write", "said"), EVERYTHING_LESION,
                         ids=[kind for kind, _, _ in EVERYTHING_LESION])
def test_a_mask_that_marks_everything_lesion_is_one_error(
        kind: str, write: Callable[[Path, np.ndarray], None], said: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    root, _ = _folder(tmp_path / "data", write)
    before = tree_digest(root)
    code, lines, report = _check(root, capsys)
    [bad] = [p for p in (root / "masks").iterdir() if p.stem == "bad"]
    assert code == EXIT_SOME_FAILED, kind
    assert lines == [f"error: {bad}: {report['problems'][0]['message']}"], (kind, lines)
    assert "more than any lesion outline" in lines[0] and said in lines[0], (kind, lines[0])
    assert report["n_images"] == 2 and report["n_errors"] == 1  # the good image carried on
    assert tree_digest(root) == before


@pytest.mark.parametrize("layout", ["labelme", "voc"])
def test_an_annotation_over_the_whole_image_is_one_error(layout: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / layout
    root.mkdir()
    bad = _labelme_everything(root) if layout == "labelme" else _voc_everything(root)
    before = tree_digest(root)
    code, lines, _ = _check(root, capsys)
    assert code == EXIT_SOME_FAILED
    assert lines == [f"error: {bad}: mask marks 100% of the image as lesion, more than any "
                     "lesion outline"]
    assert tree_digest(root) == before


def test_several_masks_that_cover_the_image_together_are_one_error_on_the_image(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def halves(masks: Path, lesion: np.ndarray) -> None:
        _save(masks / "bad_mask.png", _covering(0.5)(lesion))
        _save(masks / "bad_mask_1.png", _covering(0.5)(lesion)[::-1])
    root, _ = _folder(tmp_path / "data", halves)
    code, lines, _ = _check(root, capsys)
    assert code == EXIT_SOME_FAILED
    assert lines == [f"error: {root / 'images' / 'benign' / 'bad.png'}: its 2 masks together: "
                     "mask marks 100% of the image as lesion, more than any lesion outline"]


def test_a_large_lesion_under_the_limit_passes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    root, _ = _folder(tmp_path / "data", _png_mask("bad.png", _covering(0.85)))
    code, lines, _ = _check(root, capsys)
    assert (code, lines) == (EXIT_OK, [])


# --- item 19: transparent backgrounds are read as background, in check and in training ---------

def _rgba(colour: tuple[int, int, int], lesion_colour: tuple[int, int, int] | None = None
          ) -> Pixels:
    """Transparent `colour` around an opaque lesion (of `lesion_colour`, else `colour`)."""
    def pixels(lesion: np.ndarray) -> np.ndarray:
        out = np.zeros((*lesion.shape, 4), np.uint8)
        out[..., :3] = colour
        out[lesion, :3] = lesion_colour or colour
        out[..., 3] = np.where(lesion, 255, 0)
        return out
    return pixels


def _grey_alpha(grey: int) -> Pixels:
    return lambda lesion: np.dstack([np.full(lesion.shape, grey, np.uint8),
                                     np.where(lesion, 255, 0).astype(np.uint8)])


def _transparent_palette(masks: Path, lesion: np.ndarray) -> None:
    """Palette PNG: index 0 white and transparent (tRNS), index 1 white and opaque."""
    masks.mkdir(parents=True, exist_ok=True)
    _indexed(lesion, [255] * 6).save(masks / "bad.png", transparency=0)


TRANSPARENT = [
    ("RGBA transparent white around opaque white", _png_mask("bad.png", _rgba((255,) * 3))),
    ("RGBA transparent white around opaque red", _png_mask("bad.png", _rgba((255,) * 3,
                                                                            (255, 0, 0)))),
    ("RGBA transparent white around opaque black", _png_mask("bad.png", _rgba((255,) * 3,
                                                                              (0, 0, 0)))),
    ("RGBA transparent black around opaque white", _png_mask("bad.png", _rgba((0,) * 3,
                                                                              (255,) * 3))),
    ("RGBA black everywhere, alpha is the mask", _png_mask("bad.png", _rgba((0,) * 3))),
    ("grey+alpha transparent white", _png_mask("bad.png", _grey_alpha(255))),
    ("palette with a transparent white background", _transparent_palette),
]


@pytest.mark.parametrize(("kind", "write"), TRANSPARENT, ids=[kind for kind, _ in TRANSPARENT])
def test_a_transparent_background_is_background_for_check_and_training(
        kind: str, write: Callable[[Path, np.ndarray], None], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    root, lesion = _folder(tmp_path / "data", write)
    before = tree_digest(root)
    code, lines, _ = _check(root, capsys)
    assert (code, lines) == (EXIT_OK, []), kind
    bad = next(s for s in open_dataset(root) if s.image_id == "benign/bad.png")
    np.testing.assert_array_equal(bad.load_mask(SIZE), lesion)  # what training reads
    assert tree_digest(root) == before


def test_a_mask_transparent_everywhere_is_an_empty_mask_not_a_full_one(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    hidden = _png_mask("bad.png", lambda lesion: np.dstack(
        [np.full((*lesion.shape, 3), 255, np.uint8), np.zeros(lesion.shape, np.uint8)]))
    root, _ = _folder(tmp_path / "data", hidden)
    code, lines, _ = _check(root, capsys)
    assert code == EXIT_OK
    assert lines == [f"warning: {root / 'images' / 'benign' / 'bad.png'}: empty mask in a "
                     "benign image"]


# --- item 20: EXIF orientation -----------------------------------------------------------------

def _turned_mask(orientation: int, *, stored_like: int | None = None
                 ) -> Callable[[Path, np.ndarray], None]:
    """The lesion as a PNG tagged with EXIF `orientation`, stored so that it reads upright; or,
    with `stored_like`, stored as an image tagged `stored_like` stores its pixels (what an
    annotator who drew on the raw pixels rather than the upright image saves), whatever its
    own tag."""
    def write(masks: Path, lesion: np.ndarray) -> None:
        pixels = lesion.astype(np.uint8) * 255
        if stored_like is None:
            _save(masks / "bad.png", pixels, orientation)
        else:
            _store(masks / "bad.png", _turned_back(pixels, stored_like), orientation)
    return write


# (kind, image file, image orientation, image size, mask writer, severity, what the line says)
ORIENTATION_MISMATCHES = [
    ("JPEG turned 90, mask drawn on the stored pixels", "bad.jpg", 6, SIZE,
     _turned_mask(1, stored_like=6), "error", "fits its image only as stored"),
    ("PNG turned 270, mask drawn on the stored pixels", "bad.png", 8, SIZE,
     _turned_mask(1, stored_like=8), "error", "fits its image only as stored"),
    ("image upright, mask tagged 90 over pixels of the image's size", "bad.png", 1, SIZE,
     _turned_mask(6, stored_like=1), "error", "fits its image only as stored"),
    ("JPEG turned 180, mask drawn on the stored pixels", "bad.jpg", 3, SIZE,
     _turned_mask(1, stored_like=3), "warning", "EXIF orientation 3 on the image, 1 on the mask"),
    ("square JPEG turned 90, mask drawn on the stored pixels", "bad.jpg", 6, (48, 48),
     _turned_mask(1, stored_like=6), "warning", "EXIF orientation 6 on the image, 1 on the mask"),
    ("mirrored PNG, untagged upright mask", "bad.png", 2, SIZE, _turned_mask(1), "warning",
     "EXIF orientation 2 on the image, 1 on the mask"),
    ("upright image, mask turned 90", "bad.png", 1, SIZE, _turned_mask(6), "warning",
     "EXIF orientation 1 on the image, 6 on the mask"),
]


@pytest.mark.parametrize(("kind", "image_name", "orientation", "size", "write", "severity",
                          "said"), ORIENTATION_MISMATCHES,
                         ids=[case[0] for case in ORIENTATION_MISMATCHES])
def test_an_image_and_mask_turned_differently_get_one_line(
        kind: str, image_name: str, orientation: int, size: tuple[int, int],
        write: Callable[[Path, np.ndarray], None], severity: str, said: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    root, _ = _folder(tmp_path / "data", write, image_name=image_name,
                      image_orientation=orientation, size=size)
    before = tree_digest(root)
    code, lines, _ = _check(root, capsys)
    assert code == (EXIT_SOME_FAILED if severity == "error" else EXIT_OK), kind
    assert len(lines) == 1 and lines[0].startswith(f"{severity}: {root / 'masks' / 'bad.png'}: ")
    assert said in lines[0], (kind, lines[0])
    assert tree_digest(root) == before


@pytest.mark.parametrize(("image_name", "orientation"), [
    ("bad.jpg", 6), ("bad.jpg", 8), ("bad.png", 3), ("bad.jpg", 2)])
def test_a_mask_tagged_as_its_image_lines_up_and_passes(
        image_name: str, orientation: int, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    root, lesion = _folder(tmp_path / "data", _turned_mask(orientation), image_name=image_name,
                           image_orientation=orientation)
    code, lines, _ = _check(root, capsys)
    assert (code, lines) == (EXIT_OK, [])
    bad = next(s for s in open_dataset(root) if s.image_id == f"benign/{image_name}")
    assert bad.load_image().pixels.shape == SIZE  # upright
    np.testing.assert_array_equal(bad.load_mask(SIZE), lesion)  # what training reads


# --- item 23: the duplicate search in bounded memory --------------------------------------------

def _random_hashes(n: int, seed: int = 0) -> list[ImageHashes]:
    """Hashes as `hash_image` makes them, of random 64 x 64 thumbnails; every fifth image is a
    near copy of the one before (a few bits off), so there are candidate pairs to find."""
    rng = np.random.default_rng(seed)
    views = rng.integers(0, 2**63, size=(n, 6), dtype=np.uint64)
    for i in range(4, n, 5):
        views[i] = views[i - 1] ^ np.uint64(rng.integers(0, 2**10))
    return [ImageHashes(f"{i}", tuple(f"{int(v):016x}" for v in row),
                        rng.integers(0, 256, size=(64, 64), dtype=np.uint8))
            for i, row in enumerate(views)]


def _brute_force_pairs(hashes: list[ImageHashes], max_distance: int) -> list[tuple[int, int]]:
    views = [[int(h, 16) for h in item.phashes] for item in hashes]
    return [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))
            if min((a ^ b).bit_count() for a in views[i] for b in views[j]) <= max_distance]


def test_candidate_pairs_in_blocks_are_the_pairs_of_every_image_against_every_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hashes = _random_hashes(150)
    expected = _brute_force_pairs(hashes, 14)
    monkeypatch.setattr(duplicates, "_BLOCK", 32)  # several blocks, the last one partial
    assert len(expected) >= 30 and candidate_pairs(hashes, 14) == expected


def test_candidates_grow_with_the_images_not_their_square() -> None:
    """Thirty re-crops of one scan (all within a few bits of each other): every image keeps
    its MAX_PARTNERS nearest, at most 8 pairs per image instead of 435, and the pairs still
    join all thirty into one group."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, size=6, dtype=np.uint64)
    hashes = [ImageHashes(f"{i}", tuple(f"{int(v ^ np.uint64(1 << (i % 60))):016x}"
                                        for v in base),
                          rng.integers(0, 256, size=(64, 64), dtype=np.uint8))
              for i in range(30)]
    pairs = candidate_pairs(hashes, 14)
    assert len(_brute_force_pairs(hashes, 14)) == 435
    assert len(pairs) <= 30 * duplicates.MAX_PARTNERS
    parents = list(range(30))

    def root(i: int) -> int:
        while parents[i] != i:
            i = parents[i]
        return i

    for a, b in pairs:
        parents[root(a)] = root(b)
    assert len({root(i) for i in range(30)}) == 1


def _traced_peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_candidate_search_memory_does_not_grow_with_the_images() -> None:
    hashes = _random_hashes(4000)
    peak = _traced_peak(lambda: candidate_pairs(hashes, 14))
    # One block of buffers (1024 x 1024 x 10 bytes) and the views; 1024 rows against all
    # 4,000 images at once, as before, held 1024 x 4000 x 10 bytes (41 MB).
    assert peak < 16e6, peak


@pytest.mark.parametrize("kept_bytes", [0, 2_000_000], ids=["nothing kept", "2 MB kept"])
def test_verification_memory_grows_by_a_template_per_image_not_a_search(
        kept_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duplicates, "_KEPT_BYTES", kept_bytes)
    n = 120
    hashes = _random_hashes(n)
    chain = [(i, i + 1) for i in range(n - 1)]  # every image has partners
    peaks = [_traced_peak(lambda: correlations(hashes[:count], chain[:count - 1]))
             for count in (n // 2, n)]
    # One zoom's templates grow by ~10.5 KB an image (0.63 MB from 60 to 120 images); two
    # zooms' at once would grow 21 KB, every image's search structures kept, as before, 106 KB.
    assert peaks[1] - peaks[0] < 60 * 15e3, peaks


def test_data_split_shows_progress_through_every_stage_of_the_duplicate_search(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    stages = []

    def recording(items, description: str, total: int | None = None, **_: object):
        stages.append(description)
        return iter(items)

    monkeypatch.setattr(duplicates, "show_progress", recording)
    rng = np.random.default_rng(0)
    for index in range(12):
        _save(tmp_path / "data" / "images" / f"{index}.png",
              rng.integers(0, 256, size=(32, 32), dtype=np.uint8))
    assert main(["data", "split", str(tmp_path / "data"), "--out",
                 str(tmp_path / "split.json")]) == EXIT_OK
    assert "Traceback" not in capsys.readouterr().err
    assert stages == ["reading images", "finding duplicate candidates",
                      "comparing duplicate candidates at each zoom"]


def test_holding_out_a_scanner_reads_the_split_once_not_once_per_image(
        monkeypatch: pytest.MonkeyPatch) -> None:
    samples = [Sample(f"{i:05d}.png", Path(f"{i:05d}.png"), label="benign",
                      scanner="A" if i % 3 else "B") for i in range(600)]
    split = make_split(samples, [])
    reads = []
    sorted_ids = SplitFile.image_ids.fget
    monkeypatch.setattr(SplitFile, "image_ids",
                        property(lambda self: reads.append(1) or sorted_ids(self)))
    held = hold_out_scanner(split, samples, [], "B")
    assert len(held.subsets["held_out"]) == 200
    assert len(reads) <= 2  # it sorted all 600 ids for every image, as before: quadratic
