"""`sonocad serve` end to end: the real server on loopback, the page in headless Chromium:
uploads, boxes drawn with the mouse (real LiteMedSAM; skipped, saying why, without the
interactive extra) and annotation mode's keys.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skips, saying
so, where any is missing. Screenshots land in the temporary folder (``serve.png`` for the
segmentation model, ``serve_classification.png``) for a person to look at.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image as PILImage
from scipy import ndimage

from conftest import SEG_CLASSES, UNET_ARGS, benign_classifier_checkpoint, serving, write_checkpoint
from sonocad.data.adapters import open_dataset
from sonocad.data.check import check_dataset
from sonocad.data.phantom import Phantom, make_phantom, write_phantom_dataset
from sonocad.inference.predictor import Predictor
from sonocad.models import create_model
from sonocad.serve import create_app
from sonocad.serve.annotate import Annotations
from sonocad.serve.boxes import unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install "
                                                            "-e '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 256
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1360,900"]
OVERLAY_SHOWN = """const img = document.getElementById("overlay");
return !img.hidden && img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0;"""


def _segmenter(folder: Path, truth: np.ndarray) -> Predictor:
    """A U-Net checkpoint whose model call answers with the phantom's true lesion, softened:
    the page then shows what a trained model's outline and heatmap look like."""
    path = write_checkpoint(folder / "unet.pt", "segmentation", "unet", UNET_ARGS, SEG_CLASSES,
                            create_model("unet", **UNET_ARGS).state_dict(), input_size=SIZE)
    predictor = Predictor(path)
    soft = ndimage.gaussian_filter(truth.astype(np.float32), 4)
    logits = (12 * (soft - 0.5))[None, None]  # 0.5 contour = the lesion's edge
    predictor.runner = lambda batch: (np.repeat(logits, len(batch), axis=0),)
    return predictor


def _classifier(folder: Path) -> Predictor:
    """A ResNet34 checkpoint that calls every image benign with probability e^2 / (2 + e^2)."""
    return Predictor(benign_classifier_checkpoint(folder / "resnet34.pt", input_size=SIZE))


@contextmanager
def _serving(predictor: Predictor, **options: Any) -> Iterator[str]:
    """The app (`create_app(predictor, **options)`) under uvicorn on a free loopback port, in
    a thread; yields its address."""
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, **options),
                                           log_level="warning"))
    with serving(server) as port:
        yield f"http://127.0.0.1:{port}/"


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


needs_boxes = pytest.mark.skipif(unavailable() is not None,
                                 reason=f"boxes unavailable: {unavailable()}")
BOXES_READY = """return !document.getElementById("busy").hidden ? null :
document.getElementById("box-count").textContent;"""


def _drag_box(browser: webdriver.Chrome, box: tuple[float, float, float, float]) -> None:
    """Drag the mouse over the shown image from (x0, y0) to (x1, y1), in the image's pixels:
    the image is scaled to fit its element and centred (object-fit: contain)."""
    image = browser.find_element(By.ID, "overlay")
    width, height, natural_width, natural_height = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight];",
        image)
    scale = min(width / natural_width, height / natural_height)

    def offset(x: float, y: float) -> tuple[int, int]:  # from the element's centre
        return round((x - natural_width / 2) * scale), round((y - natural_height / 2) * scale)

    x0, y0, x1, y1 = box
    (ActionChains(browser).move_to_element_with_offset(image, *offset(x0, y0)).click_and_hold()
     .move_to_element_with_offset(image, *offset((x0 + x1) / 2, (y0 + y1) / 2))
     .move_to_element_with_offset(image, *offset(x1, y1)).release().perform())


def _lesion_box(mask: np.ndarray, pad: int = 6) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    return (cols.min() - pad, rows.min() - pad, cols.max() + 1 + pad, rows.max() + 1 + pad)


def test_page_lists_each_lesion_with_its_own_measurements(
        browser: webdriver.Chrome, tmp_path: Path, phantom: Phantom) -> None:
    """Issue 29: a model that outlines two separate regions; the page lists two lesions, each
    with its own area and diameters, as the table's `lesions` column does."""
    image = tmp_path / "phantom.png"
    PILImage.fromarray(phantom.image).save(image)
    two = np.zeros_like(phantom.mask)
    two[30:80, 30:90] = True  # 50 x 60
    two[170:200, 150:230] = True  # 30 x 80
    with _serving(_segmenter(tmp_path, two)) as url:
        _upload_through_the_page(browser, url, image)
        facts = browser.find_element(By.ID, "measurements").text
    assert "Lesions\n2" in facts
    areas = sorted(int(facts.split(f"Lesion {n} area\n")[1].split(" px")[0].replace(",", ""))
                   for n in (1, 2))
    assert areas[0] == pytest.approx(30 * 80, rel=0.2) and areas[1] == pytest.approx(
        50 * 60, rel=0.2)
    for n in (1, 2):
        longest = float(facts.split(f"Lesion {n} diameters\n")[1].split(" px")[0])
        assert longest < 90  # each its own lesion's, none spanning both (about 230 px)


@needs_boxes
def test_a_box_drawn_on_the_image_outlines_the_lesion_and_measures_it(
        browser: webdriver.Chrome, tmp_path: Path, phantom: Phantom) -> None:
    image = tmp_path / "phantom.png"
    PILImage.fromarray(phantom.image).save(image)
    model_says_nothing = np.zeros_like(phantom.mask)  # the model missed the lesion
    with _serving(_segmenter(tmp_path, model_says_nothing)) as url:
        _upload_through_the_page(browser, url, image)
        assert "No lesion detected" in browser.find_element(By.ID, "finding").text
        model_overlay = browser.find_element(By.ID, "overlay").get_attribute("src")
        _drag_box(browser, _lesion_box(phantom.mask))

        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.execute_script(BOXES_READY) == "1"
                   and d.find_element(By.ID, "overlay").get_attribute("src") != model_overlay)
        assert not browser.find_element(By.ID, "error").is_displayed()
        assert "Lesion detected" in browser.find_element(By.ID, "finding").text
        facts = browser.find_element(By.ID, "measurements").text
        assert "Lesion area" in facts and "Lesion diameters" in facts
        area = int(facts.split("Lesion area")[1].split("px")[0].replace(",", "").strip())
        assert 0.5 < area / phantom.mask.sum() < 2  # LiteMedSAM's outline of this lesion
        assert browser.find_element(By.ID, "use-boxes").get_attribute("aria-pressed") == "true"
        assert browser.execute_script(OVERLAY_SHOWN) == SIZE
        assert browser.find_element(By.ID, "download-mask").is_enabled()
        browser.save_screenshot(str(Path(tempfile.gettempdir()) / "serve_boxes.png"))

        browser.find_element(By.ID, "undo-box").click()  # no box left: no lesion, says the person
        wait.until(lambda d: d.execute_script(BOXES_READY) == "0"
                   and "No lesion detected" in d.find_element(By.ID, "finding").text)
        browser.find_element(By.ID, "use-model").click()
        assert browser.find_element(By.ID, "use-model").get_attribute("aria-pressed") == "true"
        assert browser.find_element(By.ID, "overlay").get_attribute("src") == model_overlay


@needs_boxes
def test_annotation_mode_steps_through_a_folder_with_the_keyboard(
        browser: webdriver.Chrome, tmp_path: Path) -> None:
    """0 / 1 / 2 choose the class, a box outlines the lesion, Enter saves and goes on."""
    images = tmp_path / "hospital"
    write_phantom_dataset(images, per_class=1, size=(SIZE, SIZE), seed=7)
    benign_mask = np.array(PILImage.open(images / "benign" / "benign (1)_mask.png")) > 0
    dataset = tmp_path / "dataset"
    with _serving(_segmenter(tmp_path, np.zeros((SIZE, SIZE), bool)),
                  annotations=Annotations(dataset, images)) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_element(By.ID, "item-name").text == "benign/benign (1).png"
                   and d.execute_script(OVERLAY_SHOWN) == SIZE
                   and d.find_element(By.ID, "busy").get_attribute("hidden"))
        assert not browser.find_element(By.ID, "open-button").is_displayed()
        assert browser.find_element(By.ID, "item-position").text == "1 of 3 · 0 saved"
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("1")
        _drag_box(browser, _lesion_box(benign_mask))
        wait.until(lambda d: d.execute_script(BOXES_READY) == "1")
        body.send_keys(Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "item-name").text
                   == "malignant/malignant (1).png"
                   and d.find_element(By.ID, "busy").get_attribute("hidden"))
        body.send_keys(Keys.ARROW_RIGHT)  # the malignant one later: first the normal one
        wait.until(lambda d: d.find_element(By.ID, "item-name").text == "normal/normal (1).png"
                   and d.find_element(By.ID, "busy").get_attribute("hidden"))
        body.send_keys("0")
        browser.find_element(By.ID, "patient-input").send_keys("P-7", Keys.ENTER)
        wait.until(lambda d: "2 saved" in d.find_element(By.ID, "item-position").text)
        assert not browser.find_element(By.ID, "error").is_displayed()
        browser.save_screenshot(str(Path(tempfile.gettempdir()) / "serve_annotate.png"))
        done = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#item-list .done")]
        assert done == ["benign/benign (1).png · benign", "normal/normal (1).png · normal"]

    rows = open_dataset(dataset / "manifest.csv")
    assert [(row.image_id, row.label, row.patient_id) for row in rows] == [
        ("images/benign/benign (1).png", "benign", None),
        ("images/normal/normal (1).png", "normal", "P-7")]
    assert check_dataset(dataset, rows).errors == []
    saved = np.array(PILImage.open(rows[0].mask_paths[0])) > 0
    assert (saved & benign_mask).sum() / (saved | benign_mask).sum() > 0.6
