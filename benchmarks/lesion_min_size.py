"""The smallest region that counts as a lesion, chosen on validation images (never test).

Runs a model over the BUSI and BUS-BRA validation subsets and, for each candidate minimum area
in pixels, prints lesion-level sensitivity (true lesions found at IoU >= 0.1) and made-up
lesions per image. The shipped `sonocad.measure.MIN_LESION_PX` is the largest candidate that
finds every true lesion the smallest one finds; neither data set gives a pixel spacing, so the
floor in mm^2 is a clinical one (docs/measurements.md), not a fitted one.

Usage: python benchmarks/lesion_min_size.py [--checkpoint FILE]   (default: the bundled model)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import SOURCES, machine_line, subset_samples
from sonocad.evaluation.lesion_detection import lesion_matches
from sonocad.inference.predictor import Predictor
from sonocad.measure import find_lesions
from sonocad.workflows.evaluate import predict_samples

CANDIDATES = (0, 10, 25, 50, 100, 200, 400, 800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled model")
    args = parser.parse_args()
    predictor = Predictor(args.checkpoint) if args.checkpoint else Predictor.default()
    samples = [sample for name in SOURCES for sample in subset_samples(name, "val")]
    images = []  # (truth, every lesion at no minimum)
    for sample, image, prediction in predict_samples(predictor, samples, 8):
        truth = sample.load_mask(image.pixels.shape[:2])
        truth = truth if truth is not None else np.zeros(image.pixels.shape[:2], bool)
        images.append((truth, find_lesions(prediction.lesion_probability, min_px=0)))
    print(f"Lesion minimum area on validation ({len(images)} images) — {machine_line()}\n")
    print("| minimum area (px) | true lesions found, IoU >= 0.1 | made-up lesions per image "
          "(IoU >= 0.1) | images with a made-up lesion |")
    print("| --- | --- | --- | --- |")
    for minimum in CANDIDATES:
        counts = [lesion_matches(truth, [lesion for lesion in lesions
                                         if lesion.area_px >= minimum])
                  for truth, lesions in images]
        true = sum(c["truth_lesions"] for c in counts)
        found = sum(c["found_lesions_0.1"] for c in counts)
        false = [c["false_lesions_0.1"] for c in counts]
        print(f"| {minimum} | {found}/{true} ({found / true:.1%}) | {np.mean(false):.3f} | "
              f"{np.mean([f > 0 for f in false]):.1%} |")


if __name__ == "__main__":
    main()
