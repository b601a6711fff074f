"""A detector's raw instances -> what its `Prediction` holds: the found instances, the lesion map
and the top score per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sonocad.evaluation.detection import ImageInstances
from sonocad.predictions import Instance, Prediction

INSTANCE_THRESHOLD = 0.5  # score from which an instance counts as found (tables, pictures)


def detection_outputs(found: ImageInstances, class_names: Sequence[str]
                      ) -> tuple[list[Instance], np.ndarray, dict[str, float]]:
    """(the instances scoring at least `INSTANCE_THRESHOLD`, best first; the lesion map: per
    pixel the highest score of an instance covering it, so that ``map > 0.5`` is the union of
    the found instances' masks; per class the top score of any instance, 0 without one: with
    "malignant" the image-level malignancy score of QIMS 2023)."""
    scores = np.asarray(found.scores, dtype=np.float32)
    masks = found.masks
    shape = masks.shape[1:]
    lesion_map = (np.max(masks * scores[:, None, None], axis=0) if len(scores)
                  else np.zeros(shape, dtype=np.float32)).astype(np.float32)
    top = {name: float(scores[found.labels == index].max(initial=0.0))
           for index, name in enumerate(class_names) if index > 0}
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= INSTANCE_THRESHOLD]
    instances = [Instance(class_names[int(found.labels[i])], float(scores[i]),
                          tuple(float(v) for v in found.boxes[i]), masks[i]) for i in order]
    return instances, lesion_map, top


def detected(found: ImageInstances, class_names: Sequence[str]) -> Prediction:
    """The `Prediction` of one image's raw instances."""
    instances, lesion_map, top_scores = detection_outputs(found, class_names)
    return Prediction(lesion_map, None, instances=instances, top_scores=top_scores)
