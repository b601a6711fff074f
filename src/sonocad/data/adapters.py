"""Dataset adapters: each turns one folder layout into a list of `Sample`s.

Layouts (detected in this order by `open_dataset`, or named with `layout=`):
- ``manifest``: a CSV file with columns image, mask, label, patient_id, pixel_spacing_mm and any
  clinical columns; paths relative to the CSV. Several masks are separated by ``;``.
- ``folder``: ``images/`` and ``masks/`` side by side; a mask has the image's stem (any image
  suffix) or ``<stem>_mask*.png``; an optional class sub-folder under ``images/`` is the label.
- ``voc``: Pascal VOC ``JPEGImages/`` + ``SegmentationClass/``; the label is the class name of
  the mask's lesion pixels when ``class_names.txt`` (labelme2voc) names them.
- ``labelme``: Labelme JSON files beside their images; the label is the shapes' label.
- ``busbra``: ``Images/`` + ``Masks/`` + ``bus_data.csv`` (the public BUS-BRA set): ``Case`` is
  the patient, ``Pathology`` the label, ``Device`` the scanner; BI-RADS, histology and side are
  clinical fields.
- ``busi``: ``<class>/<class> (N).png`` with ``<class> (N)_mask*.png`` (the public BUSI set).

`Sample.source` names the data set where the layout knows it (``busi``, ``busbra``, or a
manifest's ``source`` column); `Sample.scanner` the ultrasound system (BUS-BRA's ``Device``
without its probe frequency, a manifest's ``scanner`` column, BUSI's published system).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

from sonocad.data.sample import CLASS_NAMES, Sample
from sonocad.errors import InputError, SonocadError
from sonocad.io.annotations import MaskFormat
from sonocad.io.images import is_image_file
from sonocad.io.spacing import parse_spacing

_MASK_STEM = re.compile(r"^(?P<stem>.+?)_mask(_\d+)?$")


def open_dataset(path: str | Path, layout: str | None = None) -> list[Sample]:
    """Read a dataset in any supported layout; samples come sorted by image id."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    layout = layout or detect_layout(path)
    try:
        adapter = ADAPTERS[layout]
    except KeyError:
        raise SonocadError(f"unknown layout {layout!r}; known: {', '.join(ADAPTERS)}") from None
    samples = sorted(adapter(path), key=lambda s: s.image_id)
    if not samples:
        raise InputError(path, f"no images found in the {layout} layout")
    return samples


def detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise InputError(path, "a dataset is a folder or a CSV manifest")
    if (path / "bus_data.csv").is_file() and (path / "Images").is_dir():
        return "busbra"
    if (path / "images").is_dir():
        return "folder"
    if (path / "JPEGImages").is_dir() and (path / "SegmentationClass").is_dir():
        return "voc"
    if _labelme_files(path):
        return "labelme"
    if any(_is_image(p) and _MASK_STEM.match(p.stem) for p in path.glob("*/*")):
        return "busi"
    raise InputError(path, "cannot tell the dataset layout (images/ + masks/, VOC, Labelme, "
                           "BUSI class folders, or a CSV manifest); name it with --layout")


# Al-Dhabyani et al. 2020: "LOGIQ E9 ultrasound system and LOGIQ E9 Agile" (not per image).
BUSI_FOLDER, BUSI_SCANNER = "Dataset_BUSI_with_GT", "GE LOGIQ E9"


def read_busi(root: Path) -> list[Sample]:
    published = root.name == BUSI_FOLDER  # the BUSI layout also holds phantoms and user data
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if _is_image(p))
        masks_by_stem: dict[str, list[Path]] = {}
        for mask in files:
            if match := _MASK_STEM.match(mask.stem):
                masks_by_stem.setdefault(match["stem"], []).append(mask)
        for image in files:
            if _MASK_STEM.match(image.stem):
                continue
            samples.append(Sample(
                image_id=_relative_id(image, root),
                image_path=image,
                mask_paths=tuple(sorted(masks_by_stem.get(image.stem, []), key=_mask_order)),
                label=class_dir.name.lower(),
                source="busi" if published else None,
                scanner=BUSI_SCANNER if published else None,
            ))
    return samples


_BUSBRA_CLINICAL = {"BIRADS": "birads", "Histology": "histology", "Side": "side"}


def read_busbra(root: Path) -> list[Sample]:
    table = root / "bus_data.csv"
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"ID", "Case", "Pathology", "Device"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(table, f"BUS-BRA table lacks column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    samples = []
    for row in rows:
        image_id = row["ID"].strip()
        mask = root / "Masks" / f"{image_id.replace('bus_', 'mask_', 1)}.png"
        samples.append(Sample(
            image_id=f"Images/{image_id}.png",
            image_path=root / "Images" / f"{image_id}.png",
            mask_paths=(mask,) if mask.is_file() else (),
            label=row["Pathology"].strip().lower() or None,
            patient_id=row["Case"].strip() or None,
            clinical={name: row.get(column, "").strip()
                      for column, name in _BUSBRA_CLINICAL.items()},
            source="busbra",
            scanner=scanner_name(row["Device"]),
        ))
    return samples


def scanner_name(device: str) -> str | None:
    """'GE Logiq 7 @10-14MHz' -> 'GE Logiq 7': the system, without the probe's frequency."""
    return device.split("@")[0].strip() or None


def read_folder(root: Path) -> list[Sample]:
    images_dir, masks_dir = root / "images", root / "masks"
    masks_by_stem: dict[str, list[Path]] = {}
    if masks_dir.is_dir():
        for mask in sorted(p for p in masks_dir.rglob("*") if _is_image(p)):
            match = _MASK_STEM.match(mask.stem)
            masks_by_stem.setdefault(match["stem"] if match else mask.stem, []).append(mask)
    samples = []
    for image in sorted(p for p in images_dir.rglob("*") if _is_image(p)):
        label = image.parent.name.lower() if image.parent != images_dir else None
        samples.append(Sample(
            image_id=_relative_id(image, images_dir),
            image_path=image,
            mask_paths=tuple(sorted(masks_by_stem.get(image.stem, []), key=_mask_order)),
            label=label,
        ))
    return samples


def read_voc(root: Path) -> list[Sample]:
    names_file = root / "class_names.txt"
    class_names = names_file.read_text().split() if names_file.is_file() else None
    samples = []
    for image in sorted(p for p in (root / "JPEGImages").iterdir() if _is_image(p)):
        mask = root / "SegmentationClass" / f"{image.stem}.png"
        samples.append(Sample(
            image_id=image.name,
            image_path=image,
            mask_paths=(mask,) if mask.is_file() else (),
            mask_format=MaskFormat.VOC,
            label=_voc_label(mask, class_names) if mask.is_file() else None,
        ))
    return samples


def _labelme_files(root: Path) -> list[Path]:
    """The folder's JSON files but hidden ones (sonocad's own output marker among them)."""
    return sorted(p for p in root.glob("*.json") if not p.name.startswith("."))


def read_labelme(root: Path) -> list[Sample]:
    from sonocad.io.annotations import read_labelme as read_labelme_file

    samples = []
    for json_path in _labelme_files(root):
        annotation = read_labelme_file(json_path)
        # Labelme on Windows writes backslashes.
        image = (json_path.parent / annotation.image_path.replace("\\", "/")).resolve()
        labels = sorted({shape.label.lower() for shape in annotation.shapes} & set(CLASS_NAMES))
        samples.append(Sample(
            image_id=_relative_id(json_path, root),
            image_path=image,
            mask_paths=(json_path,),
            mask_format=MaskFormat.LABELME,
            label=labels[-1] if labels else None,  # malignant wins over benign
        ))
    return samples


_MANIFEST_FIELDS = {"image", "mask", "label", "patient_id", "pixel_spacing_mm", "source",
                    "scanner"}


def read_manifest(csv_path: Path) -> list[Sample]:
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise InputError(csv_path, "manifest needs an 'image' column")
        rows = list(reader)
    samples = []
    for line, row in enumerate(rows, start=2):
        image = base / row["image"]
        masks = tuple(base / m.strip() for m in (row.get("mask") or "").split(";") if m.strip())
        samples.append(Sample(
            image_id=row["image"].replace("\\", "/"),
            image_path=image,
            mask_paths=masks,
            mask_format=_mask_format_of(masks),
            label=(row.get("label") or "").strip().lower() or None,
            patient_id=(row.get("patient_id") or "").strip() or None,
            pixel_spacing_mm=_parse_spacing(row.get("pixel_spacing_mm"), csv_path, line),
            clinical={k: v for k, v in row.items() if k not in _MANIFEST_FIELDS and k},
            source=(row.get("source") or "").strip() or None,
            scanner=scanner_name(row.get("scanner") or ""),
        ))
    return samples


ADAPTERS: dict[str, Callable[[Path], list[Sample]]] = {
    "manifest": read_manifest,
    "folder": read_folder,
    "voc": read_voc,
    "labelme": read_labelme,
    "busbra": read_busbra,
    "busi": read_busi,
}


def annotated_stem(path: Path) -> str | None:
    """``x`` for a mask file named ``x_mask.png`` / ``x_mask_N.png`` (BUSI style), else None."""
    match = _MASK_STEM.match(path.stem)
    return match["stem"] if match else None


def _is_image(path: Path) -> bool:
    return path.is_file() and is_image_file(path)


def _relative_id(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _mask_order(path: Path) -> tuple[int, str]:
    # "x_mask.png" before "x_mask_1.png" before "x_mask_2.png"
    match = re.search(r"_mask_(\d+)$", path.stem)
    return (int(match.group(1)) if match else 0, path.name)


def _mask_format_of(masks: tuple[Path, ...]) -> MaskFormat:
    if masks and masks[0].suffix.lower() == ".json":
        return MaskFormat.LABELME
    if masks and masks[0].suffix.lower() == ".geojson":
        return MaskFormat.GEOJSON
    return MaskFormat.BINARY


def _parse_spacing(text: str | None, csv_path: Path, line: int) -> tuple[float, float] | None:
    if not text or not text.strip():
        return None
    try:
        return parse_spacing(text)
    except ValueError:
        raise InputError(csv_path, f"line {line}: pixel_spacing_mm {text!r} is not one or two "
                                   "positive numbers") from None


def _voc_label(mask: Path, class_names: list[str] | None) -> str | None:
    if class_names is None:
        return None
    from sonocad.io.annotations import read_voc_classes

    present = {int(c) for c in set(read_voc_classes(mask).ravel().tolist())} - {0, 255}
    names = sorted({class_names[c].lower() for c in present if c < len(class_names)}
                   & set(CLASS_NAMES), key=CLASS_NAMES.index)
    return names[-1] if names else "normal"
