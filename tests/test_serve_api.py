"""`sonocad serve` API: uploads (sniffed, size-limited), results, DICOM privacy, tokens, and
lesions outlined from boxes drawn on an image (real LiteMedSAM; skipped, saying why, without the
interactive extra)."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from PIL import ImageFile
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundImageStorage, generate_uid
from scipy import ndimage

from conftest import benign_classifier_checkpoint
from sonocad.data.phantom import make_phantom
from sonocad.errors import SonocadError
from sonocad.inference.predictor import Predictor
from sonocad.io import pixels
from sonocad.pictures import DIAMETER_COLOUR, PROMPT_COLOUR
from sonocad.serve import create_app, run
from sonocad.serve.boxes import BoxTool, unavailable
from sonocad.serve.results import ResultStore
from sonocad.serve.server import is_loopback
from sonocad.visual import PREDICTION_COLOUR

TOKEN = "s3cret-token-for-tests-0123"
BOXES_NOTE = unavailable()  # None where the interactive extra is installed
BOXES = BOXES_NOTE is None
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19700101"}
STATIC = Path(__file__).resolve().parents[1] / "src" / "sonocad" / "serve" / "static"
LOCAL = "http://localhost"  # the server answers to loopback names, not TestClient's default


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor(checkpoint)


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(predictor), base_url=LOCAL) as test_client:
        yield test_client


def _png_bytes(size: tuple[int, int] = (40, 56)) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(make_phantom("benign", size=size, seed=1).image).save(buffer, "PNG")
    return buffer.getvalue()


def _dicom_bytes(spacing: tuple[float, float] = (0.1, 0.2)) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(make_phantom("malignant", size=(40, 56), seed=2).image, "MONOCHROME2", 8)
    ds.SOPClassUID = UltrasoundImageStorage
    ds.PixelSpacing = list(spacing)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _upload(client: TestClient, data: bytes, name: str = "scan.png",
            content_type: str = "image/png", **kwargs):
    return client.post("/api/predict", files={"file": (name, data, content_type)}, **kwargs)


def test_phantom_png_gives_measurements_overlay_and_heatmap(client: TestClient) -> None:
    # A misleading name and content type: the type comes from the bytes alone.
    response = _upload(client, _png_bytes(), name="notes.txt", content_type="text/plain")

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["format"], result["width"], result["height"]) == ("PNG", 56, 40)
    assert result["task"] == "segmentation"
    assert result["class_probabilities"] is None and result["predicted_class"] is None
    assert result["lesion_detected"] is True
    assert result["lesion_area_px"] == 40 * 56
    assert result["lesion_diameter_px"] == pytest.approx(math.hypot(39, 55))
    assert result["pixel_spacing_mm"] is None  # a PNG says nothing of its pixel size
    assert result["lesion_area_mm2"] is None and result["lesion_diameter_mm"] is None

    overlay = client.get(result["overlay_url"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    pixels = np.array(PILImage.open(io.BytesIO(overlay.content)))
    rim = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert pixels.shape == (40, 56, 3) and (rim == PREDICTION_COLOUR).all(axis=1).mean() > 0.25
    # The whole image is lesion: its longest diameter runs from this corner to the opposite.
    assert tuple(pixels[0, 0]) == DIAMETER_COLOUR
    heatmap = client.get(result["heatmap_url"])
    assert np.array(PILImage.open(io.BytesIO(heatmap.content))).shape == (40, 56, 3)


def test_every_frame_of_a_multi_page_tiff_gets_its_results_as_predict_does(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = [PILImage.fromarray(make_phantom("benign", size=(40, 56 + 8 * i), seed=i).image)
             for i in range(3)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    result = _upload(client, buffer.getvalue(), name="loop.tif").json()
    assert [f["frame"] for f in result["frames"]] == [1, 2, 3]
    assert [f["width"] for f in result["frames"]] == [56, 64, 72]
    assert result["width"] == 56 and result["overlay_url"] == result["frames"][0]["overlay_url"]
    second = client.get(result["frames"][1]["overlay_url"])
    assert result["frames"][1]["overlay_url"].endswith("/overlay-2.png")
    assert np.array(PILImage.open(io.BytesIO(second.content))).shape == (40, 64, 3)
    assert client.get(f"/api/results/{result['id']}/overlay-9.png").status_code == 404
    assert client.get(f"/api/results/{result['id']}/secret.png").status_code == 422
    single = _upload(client, _png_bytes()).json()
    assert [f["frame"] for f in single["frames"]] == [None]

    # A loop longer than the viewer's limit: its first MAX_FRAMES frames.
    monkeypatch.setattr("sonocad.serve.uploads.MAX_FRAMES", 2)
    monkeypatch.setattr("sonocad.serve.uploads.read_upload.__defaults__", (2,))
    limited = _upload(client, buffer.getvalue(), name="loop.tif").json()
    assert len(limited["frames"]) == 2


def test_dicom_gives_mm_and_never_patient_data(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        response = _upload(client, _dicom_bytes(), name="Doe_Jane_PID-4711.dcm",
                           content_type="application/octet-stream")

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["format"] == "DICOM" and result["pixel_spacing_mm"] == [0.1, 0.2]
    assert result["lesion_area_mm2"] == pytest.approx(40 * 56 * 0.1 * 0.2)
    assert result["lesion_diameter_mm"] == pytest.approx(math.hypot(39 * 0.1, 55 * 0.2))
    # Neither the file name nor any patient attribute shows in the answer or a log.
    seen = response.text + caplog.text + client.get(result["overlay_url"]).text
    for secret in ("Doe", "Jane", "PID-4711", "19700101"):
        assert secret not in seen


@pytest.mark.parametrize(("data", "status", "detail"), [
    (b"hello, I am text in a file named scan.png\n" * 8, 415,
     "not a PNG, JPEG, BMP, TIFF or DICOM image"),
    (b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 20, 422, "cannot read this image: "),
    (b"", 422, "the file is empty"),
])
def test_files_that_are_not_images_are_refused_in_one_line(
        client: TestClient, data: bytes, status: int, detail: str) -> None:
    response = _upload(client, data)

    assert response.status_code == status
    message = response.json()["detail"]
    assert message.startswith(detail) and "\n" not in message
    assert "/tmp" not in message and "sonocad-upload" not in message  # no server paths


def test_oversize_upload_is_413_whether_announced_or_streamed(predictor: Predictor) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(50_000)
    with TestClient(create_app(predictor, max_upload_bytes=10_000),
                    base_url=LOCAL) as small_client:
        announced = _upload(small_client, big)  # httpx sends a Content-Length

        boundary = "sonocadboundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
        chunks = iter([head, *(big[i:i + 4096] for i in range(0, len(big), 4096)),
                       f"\r\n--{boundary}--\r\n".encode()])
        streamed = small_client.post(  # chunked: no Content-Length to trust
            "/api/predict", content=chunks,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        fits = _upload(small_client, _png_bytes())

    for response in (announced, streamed):
        assert response.status_code == 413
        assert response.json() == {"detail": "upload too large: the limit is 10,000 bytes"}
    assert fits.status_code == 200


def _huge_rle_dicom_bytes(size: int = 11_000) -> bytes:
    """An RLE DICOM whose header says `size` x `size` over a few bytes of pixel data: decoding
    would allocate the whole frame before failing."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("decoded an upload over the pixel budget")


def test_dicom_over_the_pixel_budget_is_refused_before_decoding(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sonocad.io.dicom.iter_pixels", _never)
    response = _upload(client, _huge_rle_dicom_bytes(), name="scan.dcm",
                       content_type="application/dicom")

    assert response.status_code == 422
    assert response.json() == {"detail": "cannot read this image: image too large (11000 x "
                                         "11000 pixels; the limit is 16,777,216 pixels per "
                                         "image or frame)"}


def test_uploads_share_the_readers_one_pixel_budget(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 1000)  # the phantom is 56 x 40 = 2240
    monkeypatch.setattr(ImageFile.ImageFile, "load", _never)
    response = _upload(client, _png_bytes())

    assert response.status_code == 422
    assert response.json() == {"detail": "cannot read this image: image too large (56 x 40 "
                                         "pixels; the limit is 1,000 pixels per image or frame)"}


def test_an_upload_too_small_for_a_scan_is_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    PILImage.new("L", (5000, 3)).save(buffer, "PNG")
    response = _upload(client, buffer.getvalue())

    assert response.status_code == 422
    assert response.json() == {"detail": "cannot read this image: image too small for an "
                                         "ultrasound frame (5000 x 3 pixels; each side must be "
                                         "at least 16)"}


def test_missing_file_field_is_a_one_line_422(client: TestClient) -> None:
    response = client.post("/api/predict", data={})
    assert response.status_code == 422
    assert response.json() == {"detail": "file: Field required"}


@pytest.mark.parametrize("path", [
    "/api/results/AAAAAAAAAAAAAAAAAAAAAA/overlay.png",  # well-formed, unknown
    "/api/results/..%2F..%2F..%2Fetc%2Fpasswd/overlay.png",
    "/api/results/%2E%2E/overlay.png",
    "/api/results/....................../overlay.png",
    "/api/results/AAAAAAAAAAAAAAAAAAAAAA%00/overlay.png",
    "/api/results/" + "A" * 200 + "/overlay.png",
    "/api/results/../../../etc/passwd",
])
def test_result_ids_cannot_reach_anything_but_stored_results(client: TestClient,
                                                             path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422)
    assert isinstance(response.json()["detail"], str)


def test_result_names_are_only_overlay_heatmap_and_mask(client: TestClient) -> None:
    result = _upload(client, _png_bytes()).json()
    assert client.get(f"/api/results/{result['id']}/secret.png").status_code == 422
    assert client.get(f"/api/results/{result['id']}/overlay.png").status_code == 200
    mask = client.get(result["mask_url"])  # the model's outline, 0/255 as predict writes it
    assert mask.status_code == 200 and result["mask_url"].endswith("/mask.png")
    assert np.array_equal(np.unique(np.array(PILImage.open(io.BytesIO(mask.content)))), [255])


def test_model_description_has_no_file_paths(client: TestClient, checkpoint: Path) -> None:
    response = client.get("/api/model")
    assert response.json() == {"name": "unet", "task": "segmentation",
                               "class_names": ["background", "lesion"], "input_size": [32, 32],
                               "lesion_threshold": 0.5, "backend": "torch",
                               "boxes": BOXES, "boxes_note": BOXES_NOTE, "max_boxes": 20,
                               "annotate": False}
    assert checkpoint.name not in response.text and str(checkpoint.parent) not in response.text
    assert client.get("/api/health").json()["status"] == "ok"


def test_classifier_gives_probabilities_and_a_grad_cam_heatmap(tmp_path: Path) -> None:
    path = benign_classifier_checkpoint(tmp_path / "cls.pt")
    with TestClient(create_app(Predictor(path)), base_url=LOCAL) as cls_client:
        result = _upload(cls_client, _png_bytes()).json()
        heatmap = cls_client.get(f"/api/results/{result['id']}/heatmap.png")
        overlay = cls_client.get(result["overlay_url"])

    benign = math.exp(2) / (2 + math.exp(2))
    assert result["predicted_class"] == "benign"
    assert result["class_probabilities"] == pytest.approx(
        {"normal": (1 - benign) / 2, "benign": benign, "malignant": (1 - benign) / 2})
    assert result["lesion_detected"] is None
    assert result["heatmap_url"] == f"/api/results/{result['id']}/heatmap.png"
    assert heatmap.status_code == 200 and overlay.status_code == 200


def test_token_guards_every_api_route_but_not_the_page(predictor: Predictor) -> None:
    with TestClient(create_app(predictor, token=TOKEN), base_url=LOCAL) as guarded:
        page = guarded.get("/")
        missing = guarded.get("/api/health")
        wrong = guarded.get("/api/model", headers={"Authorization": "Bearer wrong-token"})
        upload = _upload(guarded, _png_bytes())
        right = guarded.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
        lower = guarded.get("/api/health", headers={"Authorization": f"bearer {TOKEN}"})
        result = _upload(guarded, _png_bytes(),
                         headers={"Authorization": f"Bearer {TOKEN}"}).json()
        image = guarded.get(result["overlay_url"])

    assert page.status_code == 200
    for response in (missing, wrong, upload, image):
        assert response.status_code == 401
        assert response.json() == {"detail": "missing or wrong token"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert right.status_code == lower.status_code == 200


@pytest.mark.parametrize("token", ["", "short", "has a space in it, sixteen+",
                                   "ünïcödé-tökén-0123"])
def test_weak_or_unsendable_tokens_are_refused(predictor: Predictor, token: str) -> None:
    with pytest.raises(SonocadError, match="at least 16 visible ASCII"):
        create_app(predictor, token=token)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_non_loopback_host_without_token_refuses_to_start(checkpoint: Path, host: str) -> None:
    with pytest.raises(SonocadError, match="pass a token"):
        run(checkpoint, host=host, port=0)


def test_loopback_hosts() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "my-laptop"]))


def test_unexpected_failures_are_one_line_500(predictor: Predictor,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug deep inside\nwith a second line")

    monkeypatch.setattr("sonocad.serve.app.analyse", broken)
    with TestClient(create_app(predictor), raise_server_exceptions=False,
                    base_url=LOCAL) as broken_client:
        response = _upload(broken_client, _png_bytes())
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; see the server log"}


def test_page_is_served_with_a_strict_policy_and_loads_nothing_from_elsewhere(
        client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert client.get(f"/static/{name}").status_code == 200 or name == "index.html"


def test_result_store_keeps_the_latest_within_count_and_bytes() -> None:
    store = ResultStore(max_results=3, max_bytes=1000)
    ids = [store.add({"overlay": bytes(100)}) for _ in range(5)]
    assert len(store) == 3 and store.get(ids[0], "overlay") is None
    assert store.get(ids[2], "overlay") == bytes(100)  # now the most recently used
    store.add({"overlay": bytes(100)})
    assert store.get(ids[3], "overlay") is None and store.get(ids[2], "overlay") is not None
    with pytest.raises(ValueError, match="over the store"):  # alone over the byte limit
        store.add({"overlay": bytes(5000)})
    whole = store.add({"overlay": bytes(1000)})  # the whole budget: every other result goes
    assert len(store) == 1 and store.get(whole, "overlay") is not None
    assert len(set(ids)) == 5


def test_a_spacing_field_gives_a_png_sizes_in_mm_and_a_dicom_keeps_its_own(
        client: TestClient) -> None:
    def upload(data: bytes, spacing: str, name: str = "scan.png"):
        return client.post("/api/predict", files={"file": (name, data, "image/png")},
                           data={"spacing": spacing})

    png = upload(_png_bytes(), "0.1,0.2").json()
    assert png["pixel_spacing_mm"] == [0.1, 0.2]
    assert png["lesion_area_mm2"] == pytest.approx(40 * 56 * 0.02)
    dicom = upload(_dicom_bytes((0.3, 0.3)), "0.1", "scan.dcm").json()
    assert dicom["pixel_spacing_mm"] == [0.3, 0.3]
    refused = upload(_png_bytes(), "-1")
    assert refused.status_code == 422 and "spacing" in refused.json()["detail"]
    assert "\n" not in refused.json()["detail"]


# --- boxes: a lesion outlined from a box drawn on the image (LiteMedSAM) ---------------------

needs_boxes = pytest.mark.skipif(not BOXES, reason=f"boxes unavailable: {BOXES_NOTE}")


def _two_dark_ellipses() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A 160 x 200 PNG: textured tissue with two dark ellipses (a big and a small lesion), and
    their masks."""
    rows, cols = np.mgrid[:160, :200]
    big = ((rows - 70) / 30) ** 2 + ((cols - 80) / 45) ** 2 <= 1
    small = ((rows - 125) / 12) ** 2 + ((cols - 165) / 16) ** 2 <= 1
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(160, 200)), 1.5)
    texture /= texture.std()
    pixels = 150 + 40 * texture
    pixels[big | small] = 40 + 10 * texture[big | small]
    buffer = io.BytesIO()
    PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue(), big, small


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _png_of(response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.array(PILImage.open(io.BytesIO(response.content)))


@needs_boxes
def test_boxes_outline_each_lesion_and_measure_it_as_predict_does(client: TestClient) -> None:
    data, big, small = _two_dark_ellipses()
    upload = _upload(client, data).json()  # the model calls every pixel lesion
    outline_url = f"/api/results/{upload['id']}/outline"
    assert client.post(f"/api/results/{upload['id']}/prepare").json() == {"ready": True}

    one = client.post(outline_url, json={"boxes": [[30, 35, 130, 105]]})
    assert one.status_code == 200, one.text
    result = one.json()
    assert set(upload) - set(result) == {"format", "frames", "frame_limit", "frames_note"}
    assert (result["outline_source"], result["boxes"]) == ("box", [[30, 35, 130, 105]])
    assert (result["id"], result["frame"], result["lesion_count"]) == (upload["id"], 1, 1)
    mask = _png_of(client.get(result["mask_url"]))
    assert mask.shape == (160, 200) and set(np.unique(mask)) <= {0, 255}
    assert _iou(mask > 0, big) > 0.9  # LiteMedSAM gives 0.98 on this ellipse
    assert result["lesion_area_px"] == (mask > 0).sum() == result["lesions"][0]["area_px"]
    overlay = _png_of(client.get(result["overlay_url"]))
    assert (overlay == PROMPT_COLOUR).all(axis=2).sum() > 100  # the box, drawn green
    assert result["overlay_url"] != upload["overlay_url"]  # the model's pictures stay

    two = client.post(outline_url, json={"boxes": [[30, 35, 130, 105], [145, 108, 185, 142]]})
    lesions = two.json()["lesions"]
    assert two.json()["lesion_count"] == 2 and lesions[0]["area_px"] > lesions[1]["area_px"]
    both = _png_of(client.get(two.json()["mask_url"])) > 0
    assert _iou(both, big | small) > 0.85

    none = client.post(outline_url, json={"boxes": []}).json()  # the person says: no lesion
    assert (none["lesion_detected"], none["lesion_count"], none["boxes"]) == (False, 0, [])
    assert not _png_of(client.get(none["mask_url"])).any()
    assert (_png_of(client.get(upload["mask_url"])) == 255).all()  # the model's, unchanged


@needs_boxes
def test_box_routes_answer_404_for_a_result_not_kept(client: TestClient) -> None:
    unknown = "/api/results/AAAAAAAAAAAAAAAAAAAAAA"
    for path, body in ((f"{unknown}/outline", {"boxes": [[1, 1, 9, 9]]}),
                       (f"{unknown}/prepare", {"frame": 1})):
        response = client.post(path, json=body)
        assert response.status_code == 404
        assert response.json()["detail"].startswith("this image is no longer kept for boxes")
    malformed = client.post(f"/api/results/{'A' * 200}/outline", json={"boxes": []})
    assert malformed.status_code == 422 and malformed.json()["detail"].startswith("result_id: ")
    single = _upload(client, _png_bytes()).json()
    other_frame = client.post(f"/api/results/{single['id']}/outline",
                              json={"boxes": [], "frame": 2})
    assert other_frame.status_code == 422
    assert other_frame.json() == {"detail": "frame: boxes can be drawn on frame 1 of this result"}


def test_box_routes_keep_the_token_host_and_origin_rules(predictor: Predictor) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(predictor, token=TOKEN), base_url=LOCAL) as guarded:
        result = _upload(guarded, _png_bytes(), headers=auth).json()
        path = f"/api/results/{result['id']}/outline"
        no_token = guarded.post(path, json={"boxes": []})
        no_token_prepare = guarded.post(f"/api/results/{result['id']}/prepare")
        no_token_mask = guarded.get(result["mask_url"])
        foreign_host = guarded.post(path, json={"boxes": []},
                                    headers={**auth, "Host": "evil.example"})
        cross_site = guarded.post(path, json={"boxes": []},
                                  headers={**auth, "Origin": "http://evil.example"})
    for response in (no_token, no_token_prepare, no_token_mask):
        assert response.status_code == 401
    assert foreign_host.status_code == 400 and cross_site.status_code == 403


def test_without_the_interactive_extra_the_viewer_serves_and_says_why_no_boxes(
        predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    why = ('outlining from a box needs the interactive extra: pip install '
           '"sonocad[interactive]" (timm is not installed)')

    monkeypatch.setattr("sonocad.serve.boxes.missing", lambda extra: why)
    with TestClient(create_app(predictor), base_url=LOCAL) as plain:
        model = plain.get("/api/model").json()
        result = _upload(plain, _png_bytes())
        outline = plain.post(f"/api/results/{result.json()['id']}/outline", json={"boxes": []})
    assert (model["boxes"], model["boxes_note"]) == (False, why)
    assert result.status_code == 200 and result.json()["mask_url"] is not None
    assert outline.status_code == 501
    assert outline.json() == {"detail": f"boxes are not available on this server: {why}"}


@needs_boxes
def test_the_images_kept_for_boxes_stay_within_their_count_and_bytes() -> None:
    def frames(count: int) -> list[pixels.Image]:
        return [pixels.Image(np.zeros((100, 100), np.uint8)) for _ in range(count)]

    tool = BoxTool(max_results=2, max_bytes=35_000)
    for key in ("a", "b", "c"):
        tool.hold(key, frames(1))
    assert tool.frame("a", 1) is None and tool.frame("c", 1) is not None  # the oldest went
    tool.hold("loop", frames(5))  # 50,000 bytes: the first three frames fit
    assert tool.frame("loop", 3) is not None and tool.frame("loop", 4) is None
    assert tool.frame("b", 1) is None and tool.frame("c", 1) is None  # made room for it
