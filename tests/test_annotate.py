"""Annotation mode (`sonocad serve --annotate DATASET_DIR --images DIR`): a folder of images
saved, one by one, into a data set `sonocad data check` reads with no error, the originals
never touched; resumable; saving again replaces. Real BUSI images where the data set is beside
the project, else phantoms; lesions outlined from boxes by the real LiteMedSAM (skipped, saying
why, without the interactive extra)."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from conftest import BUSI_ROOT, CLS_CLASSES, unet_checkpoint, write_checkpoint
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.check import check_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.errors import InputError
from sonocad.inference.predictor import Predictor
from sonocad.io.outputs import release_claims
from sonocad.serve import create_app
from sonocad.serve.annotate import Annotations
from sonocad.serve.boxes import unavailable

LOCAL = "http://localhost"
TOKEN = "annotation-token-0123456789"
BUSI = ("benign/benign (1).png", "malignant/malignant (1).png", "normal/normal (1).png")
needs_boxes = pytest.mark.skipif(unavailable() is not None,
                                 reason=f"boxes unavailable: {unavailable()}")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three images (benign, malignant, normal) beside their masks, BUSI style: three BUSI
    images where the data set is present, else phantoms."""
    folder = tmp_path / "hospital"
    if (BUSI_ROOT / "benign").is_dir():
        for name in BUSI:
            for path in (BUSI_ROOT / name, BUSI_ROOT / name.replace(".png", "_mask.png")):
                if path.exists():
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, folder / path.relative_to(BUSI_ROOT))
    else:
        write_phantom_dataset(folder, per_class=1, size=(192, 224), seed=5)
        for path in folder.rglob("normal*_mask.png"):
            path.unlink()  # BUSI's normal images come with empty masks; phantoms' do too
    return folder


@pytest.fixture
def predictor(tmp_path: Path) -> Predictor:
    """A model that finds no lesion anywhere: outlines come from boxes or not at all."""
    return Predictor(unet_checkpoint(tmp_path / "none.pt", -5.0))


def _fingerprints(folder: Path) -> dict[Path, tuple[str, int]]:
    return {path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _truth_box(images: Path, image_id: str) -> list[float]:
    """The box around the lesion of the image's own mask, 5 % of its size to spare."""
    mask = np.array(PILImage.open(images / image_id.replace(".png", "_mask.png"))) > 0
    rows, cols = np.nonzero(mask)
    pad_y, pad_x = 0.05 * np.ptp(rows), 0.05 * np.ptp(cols)
    return [float(cols.min() - pad_x), float(rows.min() - pad_y), float(cols.max() + 1 + pad_x),
            float(rows.max() + 1 + pad_y)]


def _manifest(dataset: Path) -> list[dict[str, str]]:
    with (dataset / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def annotating(images: Path, tmp_path: Path, predictor: Predictor
               ) -> Iterator[tuple[TestClient, Path]]:
    dataset = tmp_path / "dataset"
    with TestClient(create_app(predictor, annotations=Annotations(dataset, images)),
                    base_url=LOCAL) as client:
        yield client, dataset


@needs_boxes
def test_annotation_writes_a_data_set_that_data_check_reads_without_error(
        annotating: tuple[TestClient, Path], images: Path) -> None:
    client, dataset = annotating
    before = _fingerprints(images)
    listing = client.get("/api/annotate/items").json()
    assert client.get("/api/model").json()["annotate"] is True
    # The masks beside the images are annotations, not images to annotate.
    ids = [item["image_id"] for item in listing["items"]]
    assert (listing["count"], listing["done"], listing["next"]) == (3, 0, 0)
    assert ids == sorted(ids) and not any("_mask" in image_id for image_id in ids)

    for index, image_id in enumerate(ids):
        shown = client.get(f"/api/annotate/items/{index}").json()
        assert shown["item"] == {"index": index, "image_id": image_id, "saved": None}
        assert shown["lesion_detected"] is False  # the model's own outline: nothing
        label = image_id.split("/")[0]
        body = ({"label": "normal", "patient_id": "P-3", "outline": "model"}
                if label == "normal" else
                {"label": label, "patient_id": f"P-{index}", "pixel_spacing_mm": "0.08",
                 "outline": "box", "boxes": [_truth_box(images, image_id)]})
        if label != "normal":  # drawn on the image shown, as the page does
            drawn = client.post(f"/api/results/{shown['id']}/outline",
                                json={"boxes": body["boxes"]}).json()
            assert drawn["lesion_count"] == 1
        saved = client.post(f"/api/annotate/items/{index}", json=body)
        assert saved.status_code == 200, saved.text
        assert saved.json()["item"]["saved"]["label"] == label
        assert saved.json()["next"] == (index + 1 if index < 2 else None)

    report = check_dataset(dataset, open_dataset(dataset / "manifest.csv"))
    assert report.errors == [] and report.n_images == 3
    assert report.class_counts == {"benign": 1, "malignant": 1, "normal": 1}
    assert open_dataset(dataset)  # the folder layout reads it too
    rows = {row["image"]: row for row in _manifest(dataset)}
    for image_id in ids:
        row = rows[f"images/{image_id}"]
        copy = dataset / row["image"]
        assert copy.read_bytes() == (images / image_id).read_bytes()
        if row["label"] == "normal":
            assert row["mask"] == "" and row["outline_source"] == ""
            continue
        truth = np.array(PILImage.open(images / image_id.replace(".png", "_mask.png"))) > 0
        mask = np.array(PILImage.open(dataset / row["mask"]))
        assert mask.shape == truth.shape and set(np.unique(mask)) == {0, 255}
        assert ((mask > 0) & truth).sum() / ((mask > 0) | truth).sum() > 0.6
        assert (row["outline_source"], row["pixel_spacing_mm"]) == ("box", "0.08")
    assert _fingerprints(images) == before  # every original byte-identical, mtime unchanged


@needs_boxes
def test_a_restart_resumes_after_the_last_saved_and_saving_again_replaces(
        images: Path, tmp_path: Path, predictor: Predictor) -> None:
    dataset = tmp_path / "dataset"
    before = _fingerprints(images)
    with TestClient(create_app(predictor, annotations=Annotations(dataset, images)),
                    base_url=LOCAL) as client:
        ids = [item["image_id"] for item in client.get("/api/annotate/items").json()["items"]]
        client.get("/api/annotate/items/0")
        box = _truth_box(images, ids[0])
        first = client.post("/api/annotate/items/0", json={
            "label": "benign", "outline": "box", "boxes": [box], "patient_id": "P-1"})
        assert first.status_code == 200, first.text
    release_claims()  # the server stopped

    with TestClient(create_app(predictor, annotations=Annotations(dataset, images)),
                    base_url=LOCAL) as client:
        listing = client.get("/api/annotate/items").json()
        assert (listing["done"], listing["next"]) == (1, 1)
        assert [item["saved"] for item in listing["items"]] == [True, False, False]
        shown = client.get("/api/annotate/items/0").json()["item"]["saved"]
        assert shown == {"label": "benign", "patient_id": "P-1", "pixel_spacing_mm": None,
                         "outline_source": "box", "boxes": [[round(v, 1) for v in box]]}
        mask = dataset / _manifest(dataset)[0]["mask"]
        assert mask.is_file()

        # Saved again as normal: the row is replaced and its mask (sonocad's) goes.
        again = client.post("/api/annotate/items/0", json={"label": "normal"})
        assert again.status_code == 200, again.text
    rows = _manifest(dataset)
    assert [(row["image"], row["label"], row["mask"]) for row in rows] == [
        (f"images/{ids[0]}", "normal", "")]
    assert not mask.exists()
    assert _fingerprints(images) == before


def test_saves_that_would_make_a_bad_data_set_are_refused_in_one_line(
        annotating: tuple[TestClient, Path]) -> None:
    client, dataset = annotating
    client.get("/api/annotate/items/0")
    cases = [
        ({"label": "benign", "outline": "model"}, 422,
         "a benign image needs its lesion outlined: accept the model's outline or draw a box "
         "around the lesion"),
        ({"label": "cyst"}, 422, "label: Input should be 'normal', 'benign' or 'malignant'"),
        ({"label": "normal", "pixel_spacing_mm": "-1"}, 422, "pixel_spacing_mm: "),
        ({"label": "normal", "patient_id": "line\nbreak"}, 422,
         "patient_id: at most 64 printable characters"),
        ({"label": "normal", "patient_id": "x" * 65}, 422, "patient_id: String should have "),
        ({"label": "normal", "path": "/etc/passwd"}, 422, "path: Extra inputs are not "),
    ]
    for body, status, detail in cases:
        response = client.post("/api/annotate/items/0", json=body)
        assert response.status_code == status, body
        assert response.json()["detail"].startswith(detail), body
    missing = client.get("/api/annotate/items/3")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no image 3: there are 3 (numbered from 0)"}
    assert client.get("/api/annotate/items/-1").status_code == 422
    assert not (dataset / "manifest.csv").exists()  # nothing was saved


def test_annotation_routes_keep_the_token_host_and_origin_rules(
        images: Path, tmp_path: Path, predictor: Predictor) -> None:
    app = create_app(predictor, token=TOKEN,
                     annotations=Annotations(tmp_path / "dataset", images))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/api/annotate/items").status_code == 401
        assert client.post("/api/annotate/items/0", json={"label": "normal"}).status_code == 401
        assert client.get("/api/annotate/items",
                          headers={**auth, "Host": "evil.example"}).status_code == 400
        cross = client.post("/api/annotate/items/0", json={"label": "normal"},
                            headers={**auth, "Origin": "http://evil.example"})
        assert cross.status_code == 403
        assert client.get("/api/annotate/items", headers=auth).status_code == 200
    assert not (tmp_path / "dataset" / "manifest.csv").exists()


def test_the_data_set_folder_is_claimed_as_any_output(images: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="lies inside the input folder"):
        Annotations(images / "dataset", images)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(InputError, match="not empty and was not written by sonocad"):
        Annotations(foreign, images)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images to annotate"):
        Annotations(tmp_path / "dataset", empty)
    Annotations(tmp_path / "dataset", images)
    release_claims()
    with open(tmp_path / "dataset" / ".sonocad-lock") as lock:  # another server's, say
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InputError, match="in use by another sonocad command"):
            Annotations(tmp_path / "dataset", images)


def test_the_command_line_wants_both_folders(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--annotate", "dataset"]) != 0
    assert capsys.readouterr().err == (
        "sonocad: error: --annotate DATASET_DIR and --images DIR go together: the data set to "
        "save into and the images to annotate\n")


def test_a_model_without_a_lesion_map_saves_normal_images(tmp_path: Path, images: Path) -> None:
    """A classifier draws no outline: normal images save without a mask all the same."""
    from sonocad.models import create_model

    path = write_checkpoint(tmp_path / "cls.pt", "classification", "resnet34",
                            {"num_classes": 3}, CLS_CLASSES,
                            create_model("resnet34", num_classes=3).state_dict())
    with TestClient(create_app(Predictor(path),
                               annotations=Annotations(tmp_path / "dataset", images)),
                    base_url=LOCAL) as client:
        response = client.post("/api/annotate/items/2", json={"label": "normal"})
    assert response.status_code == 200, response.text
    assert _manifest(tmp_path / "dataset")[0]["mask"] == ""


def test_a_manifest_edited_by_hand_cannot_make_a_save_touch_files_elsewhere(
        images: Path, tmp_path: Path, predictor: Predictor) -> None:
    dataset = tmp_path / "dataset"
    Annotations(dataset, images)
    release_claims()
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"not sonocad's")
    image_id = sorted(p.relative_to(images).as_posix() for p in images.rglob("*).png"))[0]
    (dataset / "manifest.csv").write_text(
        f"image,mask,label\nimages/{image_id},../precious.png,benign\n", encoding="utf-8")
    with TestClient(create_app(predictor, annotations=Annotations(dataset, images)),
                    base_url=LOCAL) as client:
        assert client.get("/api/annotate/items").json()["done"] == 1
        assert client.post("/api/annotate/items/0", json={"label": "normal"}).status_code == 200
    assert outside.read_bytes() == b"not sonocad's"
    assert _manifest(dataset)[0]["mask"] == ""
