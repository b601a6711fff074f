"""`sonocad serve` end to end: the real server on loopback, the page in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skips, saying
so, where any is missing. Screenshots land in the temporary folder (``serve.png`` for the
segmentation model, ``serve_classification.png``) for a person to look at.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image as PILImage
from scipy import ndimage

from sonocad.checkpoint import Checkpoint, save_checkpoint
from sonocad.data.phantom import Phantom, make_phantom
from sonocad.inference.predictor import Predictor
from sonocad.models import create_model
from sonocad.serve import create_app
from sonocad.transforms import TransformConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install "
                                                            "-e '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 256
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1360,900"]
OVERLAY_SHOWN = """const img = document.getElementById("overlay");
return !img.hidden && img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0;"""


def _meta(task: str, name: str, args: dict, class_names: list[str]) -> dict:
    return {"task": task, "model": {"name": name, "args": args}, "class_names": class_names,
            "transform": TransformConfig(input_size=SIZE).to_dict(), "recipe": {},
            "data": {}, "metrics": {}}


def _segmenter(folder: Path, truth: np.ndarray) -> Predictor:
    """A U-Net checkpoint whose model call answers with the phantom's true lesion, softened:
    the page then shows what a trained model's outline and heatmap look like."""
    args = {"base_width": 4, "depth": 2}
    path = folder / "unet.pt"
    save_checkpoint(path, Checkpoint(_meta("segmentation", "unet", args,
                                           ["background", "lesion"]),
                                     create_model("unet", **args).state_dict()))
    predictor = Predictor(path)
    soft = ndimage.gaussian_filter(truth.astype(np.float32), 4)
    logits = torch.from_numpy(12 * (soft - 0.5))[None, None]  # 0.5 contour = the lesion's edge
    predictor.runner = lambda batch: (logits.expand(len(batch), -1, -1, -1),)
    return predictor


def _classifier(folder: Path) -> Predictor:
    """A ResNet34 checkpoint that calls every image benign with probability e^2 / (2 + e^2)."""
    model = create_model("resnet34", num_classes=3)
    torch.nn.init.zeros_(model.fc.weight)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    path = folder / "resnet34.pt"
    save_checkpoint(path, Checkpoint(_meta("classification", "resnet34", {"num_classes": 3},
                                           ["normal", "benign", "malignant"]),
                                     model.state_dict()))
    return Predictor(path)


@contextmanager
def _serving(predictor: Predictor) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom("malignant", size=(SIZE, SIZE), seed=3)


def _upload_through_the_page(browser: webdriver.Chrome, url: str, image: Path) -> None:
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "·" in d.find_element(By.ID, "model").text)  # /api/model answered
    browser.find_element(By.ID, "file-input").send_keys(str(image))
    wait.until(lambda d: d.execute_script(OVERLAY_SHOWN))
    assert browser.execute_script(OVERLAY_SHOWN) == SIZE
    assert not browser.find_element(By.ID, "error").is_displayed()


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_page_uploads_an_image_and_shows_the_result(
        browser: webdriver.Chrome, tmp_path: Path, phantom: Phantom, task: str) -> None:
    image = tmp_path / "phantom.png"
    PILImage.fromarray(phantom.image).save(image)
    predictor = (_segmenter(tmp_path, phantom.mask) if task == "segmentation"
                 else _classifier(tmp_path))

    with _serving(predictor) as url:
        _upload_through_the_page(browser, url, image)
        text = browser.find_element(By.TAG_NAME, "main").text
        if task == "segmentation":
            assert "Lesion detected" in text
            assert "Lesion area" in text and "Lesion diameters" in text
            assert f"{SIZE} × {SIZE} px" in text
            browser.find_element(By.ID, "show-heatmap").click()
            assert browser.execute_script(
                "const h = document.getElementById('heatmap');"
                "return !h.hidden && h.complete && h.naturalWidth") == SIZE
            browser.find_element(By.ID, "show-outline").click()
        else:
            assert "Predicted: benign (78.7%)" in text
            for name in ("normal", "benign", "malignant"):
                assert name in browser.find_element(By.ID, "probabilities").text
            browser.find_element(By.ID, "show-heatmap").click()  # Grad-CAM of the call
            assert browser.execute_script(
                "const h = document.getElementById('heatmap');"
                "return !h.hidden && h.complete && h.naturalWidth") == SIZE
        name = "serve.png" if task == "segmentation" else f"serve_{task}.png"
        browser.save_screenshot(str(Path(tempfile.gettempdir()) / name))


def test_page_names_a_refused_file_in_one_clear_message(
        browser: webdriver.Chrome, tmp_path: Path, phantom: Phantom) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image\n" * 20)
    with _serving(_segmenter(tmp_path, phantom.mask)) as url:
        browser.get(url)
        browser.find_element(By.ID, "file-input").send_keys(str(text_file))
        error = WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.ID, "error").is_displayed()
            and d.find_element(By.ID, "error-text").text)
    assert error == ("notes.png could not be analysed: "
                     "not a PNG, JPEG, BMP, TIFF or DICOM image")



def test_page_shows_the_default_models_final_call_and_its_flag(
        browser: webdriver.Chrome, tmp_path: Path, phantom: Phantom) -> None:
    image = tmp_path / "phantom.png"
    PILImage.fromarray(phantom.image).save(image)
    predictor = Predictor.default()
    (prediction,) = predictor.predict([phantom.image])
    with _serving(predictor) as url:
        _upload_through_the_page(browser, url, image)
        call = browser.find_element(By.ID, "final-call").text
        assert call.startswith(f"Call: {prediction.final_class}")
        flags = browser.find_elements(By.ID, "low-confidence")
        assert bool(flags) == prediction.decision.low_confidence


def test_page_steps_through_the_frames_of_a_multi_page_tiff(
        browser: webdriver.Chrome, tmp_path: Path, phantom: Phantom) -> None:
    """Three pages of different widths: the slider shows each frame's picture and numbers."""
    loop = tmp_path / "loop.tif"
    pages = [PILImage.fromarray(phantom.image[:, : SIZE - 32 * i]) for i in range(3)]
    pages[0].save(loop, save_all=True, append_images=pages[1:])
    with _serving(_segmenter(tmp_path, phantom.mask)) as url:
        _upload_through_the_page(browser, url, loop)
        assert browser.find_element(By.ID, "frames").is_displayed()
        assert browser.find_element(By.ID, "frame-count").text == "3"
        browser.execute_script("const s = document.getElementById('frame-input');"
                               "s.value = '3'; s.dispatchEvent(new Event('input'));")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.ID, "frame-number").text == "3"
            and d.execute_script(OVERLAY_SHOWN) == SIZE - 64)
        assert f"{SIZE - 64} × {SIZE} px" in browser.find_element(By.ID, "measurements").text
