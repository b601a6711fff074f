"""One answer per image: the class call reconciled with the lesion outline, and a flag that says
"do not trust this one".

A multitask model's two heads can disagree: a lesion outlined while the class head says
"normal", or "benign" / "malignant" with nothing outlined. The rule, stored in the checkpoint's
meta under ``decision`` (chosen on validation data by `sonocad.workflows.decision_fit`):

- "normal" with a predicted lesion covering at least ``min_lesion_fraction`` of the image
  becomes the likelier of benign and malignant (reason ``lesion outlined``);
- benign or malignant with a predicted lesion covering less than ``min_presence_fraction``
  becomes "normal" (reason ``too little outlined``): presence is read from the outline, which
  every scanner's lesion-free tissue taught, not from the class head alone (0: never);
- any other lesion class with no lesion pixel keeps its call, with the reason ``no lesion
  outlined``;
- ``uncertainty`` is the score named by ``score`` (one of `SCORES`); above ``flag_threshold``
  (or at it) the image is flagged ``low_confidence``;
- ``p_malignant`` is the class head's malignancy belief among lesions, P(malignant) /
  (P(benign) + P(malignant)), recalibrated by Platt scaling (``malignancy``: slope and
  intercept on its logit, fitted on validation lesion images);
- ``rule_out`` marks an image the model would not send to biopsy: the final call is normal, or
  ``p_malignant`` is below ``rule_out_below`` (the validation threshold that keeps at least
  98 % of malignant lesions above it, counting those called normal as missed).

The raw class probabilities and the argmax stay beside the final decision in every table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sonocad.data.sample import LESION_CLASSES
from sonocad.predictions import Decision

LESION_OUTLINED = "lesion outlined"
NO_LESION_OUTLINED = "no lesion outlined"
TOO_LITTLE_OUTLINED = "too little outlined"


def class_margin(probabilities: Mapping[str, float], lesion: np.ndarray) -> float:
    """1 - (top probability - runner-up): 0 when the class head is sure, 1 on a tie."""
    top, second = sorted(probabilities.values(), reverse=True)[:2]
    return 1.0 - (top - second)


def outline_entropy(probabilities: Mapping[str, float], lesion: np.ndarray) -> float:
    """Binary entropy (bits) of the lesion map summed over the image, per predicted lesion
    pixel (at least one): a fuzzy or scattered outline scores high, a crisp one or a crisply
    empty map low."""
    p = np.clip(lesion.astype(np.float64), 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(entropy.sum() / max(int((lesion > 0.5).sum()), 1))


def combined(probabilities: Mapping[str, float], lesion: np.ndarray) -> float:
    """The mean of the class margin and the outline entropy (capped at 1)."""
    return (class_margin(probabilities, lesion)
            + min(outline_entropy(probabilities, lesion), 1.0)) / 2


SCORES: dict[str, Callable[[Mapping[str, float], np.ndarray], float]] = {
    "class_margin": class_margin, "outline_entropy": outline_entropy, "combined": combined}


@dataclass(frozen=True)
class DecisionRule:
    min_lesion_fraction: float  # math.inf: never overrule "normal"
    score: str
    flag_threshold: float  # math.inf: never flag
    chosen_on: str = ""  # what the numbers were fitted on, for the model card
    min_presence_fraction: float = 0.0  # 0: never overrule a lesion call
    malignancy: tuple[float, float] | None = None  # Platt (slope, intercept); None: raw ratio
    rule_out_below: float | None = None  # None: no rule-out point

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown uncertainty score {self.score!r} (known: "
                             f"{', '.join(SCORES)})")

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity: None means "never".
        return {k: (None if isinstance(v, float) and math.isinf(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionRule:
        def bound(key: str) -> float:
            return math.inf if data.get(key) is None else float(data[key])

        platt = data.get("malignancy")
        rule_out = data.get("rule_out_below")
        return cls(bound("min_lesion_fraction"), str(data["score"]),
                   bound("flag_threshold"), str(data.get("chosen_on", "")),
                   float(data.get("min_presence_fraction") or 0.0),
                   None if platt is None else (float(platt[0]), float(platt[1])),
                   None if rule_out is None else float(rule_out))


def decide(rule: DecisionRule, probabilities: Mapping[str, float],
           lesion: np.ndarray) -> Decision:
    """The final class, why it differs from the argmax (if it does), and the trust flag."""
    fraction = float((lesion > 0.5).mean()) if lesion.size else 0.0
    final, reason = final_call(rule, probabilities, fraction)
    uncertainty = SCORES[rule.score](probabilities, lesion)
    p_malignant = malignancy(rule, probabilities)
    return Decision(final, reason, uncertainty, uncertainty >= rule.flag_threshold,
                    p_malignant, ruled_out(rule, final, p_malignant))


def malignancy_ratio(probabilities: Mapping[str, float]) -> float | None:
    """P(malignant) / (P(benign) + P(malignant)): the belief once "normal" is set aside."""
    if "benign" not in probabilities or "malignant" not in probabilities:
        return None
    total = probabilities["benign"] + probabilities["malignant"]
    return probabilities["malignant"] / total if total > 0 else 0.5


def logit(p: float | np.ndarray) -> float | np.ndarray:
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


def malignancy(rule: DecisionRule, probabilities: Mapping[str, float]) -> float | None:
    """The calibrated P(malignant) of a lesion (the raw ratio where the rule has no scaling)."""
    ratio = malignancy_ratio(probabilities)
    if ratio is None or rule.malignancy is None:
        return ratio
    slope, intercept = rule.malignancy
    return float(1 / (1 + math.exp(-(slope * float(logit(ratio)) + intercept))))


def ruled_out(rule: DecisionRule, final: str, p_malignant: float | None) -> bool | None:
    """Whether the model would spare this image a biopsy (None: the rule has no such point)."""
    if rule.rule_out_below is None or p_malignant is None:
        return None
    return final == "normal" or p_malignant < rule.rule_out_below


def final_call(rule: DecisionRule, probabilities: Mapping[str, float],
               lesion_fraction: float) -> tuple[str, str]:
    """(final class, reason) from the class probabilities and the predicted lesion's share of
    the image."""
    raw = max(probabilities, key=probabilities.__getitem__)
    lesion_classes = [name for name in LESION_CLASSES if name in probabilities]
    if raw == "normal" and lesion_classes and lesion_fraction >= rule.min_lesion_fraction:
        return max(lesion_classes, key=probabilities.__getitem__), LESION_OUTLINED
    if raw in LESION_CLASSES and "normal" in probabilities \
            and lesion_fraction < rule.min_presence_fraction:
        return "normal", TOO_LITTLE_OUTLINED
    if raw in LESION_CLASSES and lesion_fraction == 0:
        return raw, NO_LESION_OUTLINED
    return raw, ""


