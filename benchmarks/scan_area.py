"""The estimated scan area of screen captures must leave scans that fill their image alone.

BUSI and BUS-BRA are scans cropped from their screens: `sonocad.io.scan_area` should find no
scan area in them (the image is the scan), and where it finds one, analysing only that area
must not lower lesion IoU. For the test subsets of both, this reads every image as `predict`
does (`sonocad.io.images.iter_frames`), counts the images that get an estimated region, and
scores the model's lesion map on the images with a lesion twice through
`Predictor.predict_images`: with the estimated region and with none (the whole image). It also
counts estimated regions over every image of both data sets, every split (no model run).

Usage: python benchmarks/scan_area.py [--checkpoint FILE]   (default: the bundled model)
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from _common import SOURCES, machine_line, subset_samples
from sonocad.data.sample import Sample
from sonocad.data.sources import Source
from sonocad.evaluation.segmentation import image_metrics
from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.io.images import iter_frames
from sonocad.io.pixels import Image

BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled model")
    args = parser.parse_args()
    predictor = Predictor(args.checkpoint) if args.checkpoint else Predictor.default()
    print(f"Estimated scan areas on BUSI and BUS-BRA — {machine_line()}\n")
    print("| data set | test images with an estimated region | lesion images | lesion IoU, "
          "whole image | lesion IoU, estimated region | largest change on one image | "
          "all images with an estimated region |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (data, split) in SOURCES.items():
        samples = Source(split.stem, data, split).open()
        test = subset_samples(name, "test")
        with_region = sum(bool(_read(sample).regions) for sample in test)
        whole, estimated = _lesion_ious(predictor, test)
        change = np.abs(estimated - whole).max()
        everywhere = sum(bool(_read(sample).regions) for sample in samples)
        print(f"| {name} | {with_region}/{len(test)} | {len(whole)} | {whole.mean():.4f} | "
              f"{estimated.mean():.4f} | {change:.4f} | {everywhere}/{len(samples)} |")


def _read(sample: Sample) -> Image:
    """The image as `predict` reads it: its first frame, with its estimated region if any."""
    return next(iter_frames(sample.image_path))


def _lesion_ious(predictor: Predictor, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Per image with a lesion: IoU of the lesion map predicted on the whole image, and on its
    estimated region where it has one."""
    whole, estimated = [], []
    for start in range(0, len(samples), BATCH):
        images = [_read(sample) for sample in samples[start:start + BATCH]]
        plain = [replace(image, regions=()) for image in images]
        for sample, image, without, within in zip(
                samples[start:start + BATCH], images, predictor.predict_images(plain),
                predictor.predict_images(images)):
            truth = sample.load_mask(image.shape)
            if truth is None or not truth.any():
                continue
            for scores, prediction in ((whole, without), (estimated, within)):
                if isinstance(prediction, NonFiniteOutput):
                    raise prediction
                scores.append(image_metrics(truth, prediction.mask)["iou"])
    return np.array(whole), np.array(estimated)


if __name__ == "__main__":
    main()
