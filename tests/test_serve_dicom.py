"""The viewer's DICOM download: a real single-frame DICOM upload (pydicom-data's dual-view ALOKA
file) gives a SEG and an SR of the outline shown, the model's or the boxes', in its study."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from pydicom import dcmread

from sonocad.data.phantom import make_phantom
from sonocad.extras import missing
from sonocad.inference.predictor import Predictor
from sonocad.serve import create_app

data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed (pip "
                                                      "install -e '.[test]')")
LOCAL = "http://localhost"
SOURCE = Path(data_store.DataStore().data_path) / "gdcm-US-ALOKA-16.dcm"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Predictor.default()), base_url=LOCAL) as test_client:
        yield test_client


def _files(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _uploaded(client: TestClient) -> dict:
    response = client.post("/api/predict", files={"file": ("scan.dcm", SOURCE.read_bytes(),
                                                           "application/dicom")})
    assert response.status_code == 200 and response.json()["format"] == "DICOM"
    return response.json()


def test_the_models_outline_as_seg_and_sr_in_the_uploads_study(client: TestClient) -> None:
    result = _uploaded(client)
    files = _files(client.post(f"/api/results/{result['id']}/dicom", json={"boxes": None}))
    assert sorted(files) == ["sonocad_seg.dcm", "sonocad_sr.dcm"]
    source = dcmread(SOURCE, stop_before_pixels=True)
    seg = hd.seg.Segmentation.from_dataset(dcmread(io.BytesIO(files["sonocad_seg.dcm"])))
    sr = dcmread(io.BytesIO(files["sonocad_sr.dcm"]))
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert seg.get_segment_numbers() == [1]  # read back by highdicom
    mask = np.asarray(dcmread(io.BytesIO(files["sonocad_seg.dcm"])).pixel_array).astype(bool)
    assert mask.shape == (480, 640) and mask.any() == (result["lesion_count"] > 0)


@pytest.mark.skipif(missing("interactive") is not None, reason=f"{missing('interactive')}")
def test_the_boxes_outline_as_seg(client: TestClient) -> None:
    result = _uploaded(client)
    box = [120, 150, 260, 300]  # in the left view
    files = _files(client.post(f"/api/results/{result['id']}/dicom", json={"boxes": [box]}))
    seg = dcmread(io.BytesIO(files["sonocad_seg.dcm"]))
    frame = np.asarray(seg.pixel_array).astype(bool)
    rows, cols = np.nonzero(frame)
    assert rows.size and 120 <= cols.min() and cols.max() < 270 and 140 <= rows.min()


def test_what_cannot_be_made_is_one_line(client: TestClient) -> None:
    buffer = io.BytesIO()
    PILImage.fromarray(make_phantom("benign", size=(64, 80), seed=2).image).save(buffer, "PNG")
    png = client.post("/api/predict", files={"file": ("a.png", buffer.getvalue(), "image/png")})
    refused = client.post(f"/api/results/{png.json()['id']}/dicom", json={"boxes": None})
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("a SEG and SR are made for a single-frame DICOM")
    assert client.post("/api/results/0123456789abcdef012345/dicom",
                       json={"boxes": None}).status_code == 404
    result = _uploaded(client)
    bad = client.post(f"/api/results/{result['id']}/dicom", json={"boxes": [[1, 2, 3]]})
    assert bad.status_code == 422 and "\n" not in bad.json()["detail"]
