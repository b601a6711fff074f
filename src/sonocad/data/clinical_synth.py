"""SYNTHETIC clinical factors for images that have none, so the QIMS 2023 pipeline can run.

No public breast-ultrasound data set carries age, family history, BRCA status and breast
density, so this module draws them at random, conditioned on each image's class, for tests,
demos and the BUSI benchmark. They are NOT patient data and say nothing about any patient or
about how well clinical factors work: a number computed from them shows only that the
pipeline runs. Every table written here is labelled: each row has ``clinical_source`` =
``SYNTHETIC`` (carried into every downstream table and printout by `sonocad combine`), and the
file name must contain "SYNTHETIC".

Distributions (ASSUMPTIONS). The QIMS 2023 paper (Bong, Kim & Jeong) describes 1,041 masses
under 1 cm (633 benign, 408 malignant) from 1,041 Korean patients and compares these factors
between groups in its Table 1, but its numbers are not available to us; the values below are
plausible choices for such a cohort, not the paper's:

============================  ===========  ===========
factor                        benign       malignant
============================  ===========  ===========
age (years), normal, clipped  44 +- 10     53 +- 11
family history of breast ca.  10 %         18 %
BRCA mutation (if tested)     1 %          5 %
BI-RADS density a / b / c / d 3/12/50/35 % 5/15/45/35 %
============================  ===========  ===========

Missing (drawn independently of class): age 1 %, family history 8 %, BRCA 70 % (most women are
never tested), density 10 % (no mammogram). Ages are clipped to 20-90 and rounded to years.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonocad.errors import SonocadError
from sonocad.io.atomic import write_text
from sonocad.models.clinical import CLINICAL_FIELDS, DENSITY_CATEGORIES

SYNTHETIC = "SYNTHETIC"
SOURCE_COLUMN = "clinical_source"


@dataclass(frozen=True)
class ClassProfile:
    age_mean: float
    age_sd: float
    family_history: float  # probability
    brca_mutation: float  # probability among those tested
    density: tuple[float, float, float, float]  # probabilities of BI-RADS a, b, c, d


PROFILES = {
    "benign": ClassProfile(44.0, 10.0, 0.10, 0.01, (0.03, 0.12, 0.50, 0.35)),
    "malignant": ClassProfile(53.0, 11.0, 0.18, 0.05, (0.05, 0.15, 0.45, 0.35)),
}
MISSING_RATES = {"age": 0.01, "family_history": 0.08, "brca_mutation": 0.70,
                 "breast_density": 0.10}
AGE_RANGE = (20, 90)


def synthesize_clinical(image_ids: Sequence[str], labels: Sequence[str], *,
                        seed: int = 0) -> list[dict[str, str]]:
    """One SYNTHETIC row per image: image_id, the clinical fields as table text ("" where
    missing) and clinical_source = SYNTHETIC. The same ids, labels and seed give the same rows."""
    if len(image_ids) != len(labels):
        raise SonocadError(f"{len(image_ids)} image ids for {len(labels)} labels")
    unknown = sorted(set(labels) - set(PROFILES))
    if unknown:
        raise SonocadError(f"no synthetic clinical profile for label(s) {', '.join(unknown)} "
                           f"(only {', '.join(PROFILES)})")
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, label in zip(image_ids, labels):
        profile = PROFILES[label]
        age = int(np.clip(round(rng.normal(profile.age_mean, profile.age_sd)), *AGE_RANGE))
        values = {
            "age": str(age),
            "family_history": _yes_no(rng.random() < profile.family_history),
            "brca_mutation": _yes_no(rng.random() < profile.brca_mutation),
            "breast_density": str(rng.choice(DENSITY_CATEGORIES, p=profile.density)),
        }
        for name in CLINICAL_FIELDS:  # a fixed number of draws per row, whatever is missing
            if rng.random() < MISSING_RATES[name]:
                values[name] = ""
        rows.append({"image_id": image_id, **values, SOURCE_COLUMN: SYNTHETIC})
    return rows


def write_synthetic_clinical(path: str | Path, image_ids: Sequence[str], labels: Sequence[str],
                             *, seed: int = 0) -> Path:
    """Write `synthesize_clinical` rows as CSV to `path`, whose name must say SYNTHETIC."""
    path = Path(path)
    if SYNTHETIC not in path.name:
        raise SonocadError(f"{path}: a synthetic clinical table's file name must contain "
                           f"{SYNTHETIC}, e.g. clinical_{SYNTHETIC}.csv")
    rows = synthesize_clinical(image_ids, labels, seed=seed)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image_id", *CLINICAL_FIELDS, SOURCE_COLUMN])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
    return path


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
