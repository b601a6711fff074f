"""Box prompts (LiteMedSAM) against the bundled model's own outline, on BUSI and BUS-BRA test.

For every test image with a lesion: one box per lesion of the truth mask (its bounding box; the
lesion floor `MIN_LESION_PX` applies), the same boxes with each side moved at random by up to
+-10 % of the box's size (a hurried hand), the bundled model's outline, and that outline cut to
the truth boxes. Per-image lesion IoU and Dice with 95 % bootstrap CIs (by patient where the
source names patients). Then latency on this machine: the encoder (once per image) and the
decoder (once per box), best of 5, the peak memory of a process that only outlines, and the
viewer's answer to one box drawn (`POST /api/results/{id}/outline`, in process: outline,
measurements, the call retaken, three pictures encoded), best of 5.

Usage: python benchmarks/box_prompt.py [--limit N] [--seed 0] [--latency-only]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _common import SOURCES, best_seconds, machine_line, subset_samples
from sonocad.evaluation.bootstrap import bootstrap_ci
from sonocad.evaluation.segmentation import confusion, overlap_metrics
from sonocad.inference.box_prompt import BoxOutliner, box_lesion_map
from sonocad.inference.predictor import Predictor
from sonocad.measure import MIN_LESION_PX
from sonocad.workflows.evaluate import predict_samples

JITTER = 0.10
METHODS = ("truth boxes", "boxes jittered +-10 %", "bundled model", "bundled model, cut to boxes")


def truth_boxes(truth: np.ndarray) -> list[tuple[float, float, float, float]]:
    labels, _ = ndimage.label(truth, structure=np.ones((3, 3), bool))
    return [(float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
            for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1)
            if np.count_nonzero(labels[rows, cols] == index) >= MIN_LESION_PX]


def jittered(boxes: list[tuple[float, ...]], rng: np.random.Generator
             ) -> list[tuple[float, float, float, float]]:
    moved = []
    for x0, y0, x1, y1 in boxes:
        dx, dy = JITTER * (x1 - x0), JITTER * (y1 - y0)
        a, b, c, d = rng.uniform(-1, 1, 4)
        moved.append((x0 + a * dx, y0 + b * dy, x1 + c * dx, y1 + d * dy))
    return moved


def inside(boxes: list[tuple[float, ...]], shape: tuple[int, int]) -> np.ndarray:
    region = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        region[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return region


def latency(outliner: BoxOutliner, pixels: np.ndarray) -> tuple[float, float]:
    embedding = outliner.embed(pixels)
    height, width = pixels.shape[:2]
    box = [(width * 0.3, height * 0.3, width * 0.6, height * 0.6)]
    return (best_seconds(lambda: outliner.embed(pixels)),
            best_seconds(lambda: outliner.probabilities(embedding, box)))


def viewer_seconds(path: Path) -> tuple[float, float]:
    """(embedding an upload, answering one box) in the viewer's app, in process."""
    from fastapi.testclient import TestClient

    from sonocad.serve import create_app

    with TestClient(create_app(Predictor.default()), base_url="http://127.0.0.1") as client:
        uploaded = client.post("/api/predict", files={"file": (path.name, path.read_bytes())})
        result = uploaded.json()["id"]
        box = {"boxes": [[100, 80, 300, 220]]}
        started = time.perf_counter()
        client.post(f"/api/results/{result}/prepare", json={"frame": 1}).raise_for_status()
        prepare = time.perf_counter() - started
        answer = best_seconds(lambda: client.post(f"/api/results/{result}/outline",
                                                  json=box).raise_for_status())
    return prepare, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="at most N lesion images per source")
    parser.add_argument("--seed", type=int, default=0, help="of the jitter")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the timings (on a quiet machine)")
    args = parser.parse_args()
    start = time.perf_counter()
    outliner = BoxOutliner()
    load_s = time.perf_counter() - start
    subsets = {name: [sample for sample in subset_samples(name, "test")
                      if sample.mask_paths and sample.label != "normal"] for name in SOURCES}
    first = next(iter(subsets.values()))[0].load_image().pixels
    encoder_s, decoder_s = latency(outliner, first)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.latency_only:
        prepare_s, box_s = viewer_seconds(next(iter(subsets.values()))[0].image_path)
        print(f"{machine_line()}\nweights verified and loaded {load_s:.2f} s, encoder "
              f"{encoder_s * 1000:.0f} ms per image, decoder {decoder_s * 1000:.0f} ms per box, "
              f"peak memory {peak_mb:.0f} MB; viewer: embedding an upload {prepare_s:.2f} s, "
              f"answering one box {box_s * 1000:.0f} ms")
        return

    predictor = Predictor.default()
    rng = np.random.default_rng(args.seed)
    print(f"Box prompts (LiteMedSAM) vs the bundled model's outline, test lesion images — "
          f"{machine_line()}\n")
    print("| source | images | outline | lesion IoU (95 % CI) | Dice (95 % CI) |")
    print("| --- | --- | --- | --- | --- |")
    for name, samples in subsets.items():
        samples = samples[:args.limit]
        scores: dict[str, list[tuple[float, float]]] = {method: [] for method in METHODS}
        patients = []
        for sample, image, prediction in predict_samples(predictor, samples, 8):
            truth = sample.load_mask(image.pixels.shape[:2])
            boxes = truth_boxes(truth)
            if not boxes:
                continue
            embedding = outliner.embed(image.pixels)
            model = prediction.mask
            outlines = {
                METHODS[0]: box_lesion_map(outliner.probabilities(embedding, boxes)) > 0.5,
                METHODS[1]: box_lesion_map(outliner.probabilities(
                    embedding, jittered(boxes, rng))) > 0.5,
                METHODS[2]: model,
                METHODS[3]: model & inside(boxes, truth.shape)}
            for method, outline in outlines.items():
                overlap = overlap_metrics(confusion(truth, outline))
                scores[method].append((overlap["iou"], overlap["dice"]))
            patients.append(sample.patient_id or sample.image_id)
        for method, pairs in scores.items():
            iou, dice = np.array(pairs).T
            cells = [f"{values.mean():.3f} ({low:.3f}-{high:.3f})"
                     for values in (iou, dice)
                     for low, high in [bootstrap_ci(values, groups=patients)]]
            print(f"| {name} | {len(iou)} | {method} | {cells[0]} | {cells[1]} |")
    print(f"\nLatency on this machine ({first.shape[1]} x {first.shape[0]} px image): "
          f"weights verified and loaded {load_s:.2f} s, encoder {encoder_s * 1000:.0f} ms per "
          f"image, decoder {decoder_s * 1000:.0f} ms per box; peak memory of the outlining "
          f"process {peak_mb:.0f} MB (before the bundled model is loaded).")


if __name__ == "__main__":
    main()
