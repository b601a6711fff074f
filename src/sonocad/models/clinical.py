"""The QIMS 2023 clinical model: an MLP on age, family history, BRCA mutation and breast density.

Inputs come from a table's text cells (a CSV manifest's clinical columns, or a table keyed by
image id), parsed by `parse_clinical`:
- ``age`` in years;
- ``family_history`` (of breast cancer) and ``brca_mutation``: yes/no, true/false, 1/0,
  positive/negative;
- ``breast_density``: the BI-RADS category a-d (the 4th edition's 1-4 are read as a-d).
An empty cell, "na", "unknown" or "missing" is a missing value. Column names are matched
after folding case, spaces and hyphens to underscores, and common spellings are accepted
(`COLUMN_ALIASES`: "Family history", "BRCA", "density", ...); docs/clinical.md is the spec.

Missing values are handled explicitly, with everything fitted on training rows only
(`ClinicalFeatures`): age takes the training median and binary factors the training mode, each
with an indicator column saying it was missing; density is one-hot over a, b, c, d and
"missing". Age is standardised. That gives 11 inputs whatever the training rows held, so a
model always has the same shape.

The network (`ClinicalMLP`) follows the paper: hidden layers of 30-60-120-60-30 units, each
Linear -> BatchNorm -> ReLU, then two outputs whose softmax is (benign, malignant). It returns
logits; training uses cross-entropy, which applies the softmax. It is a tabular model, so it
is not in the image-model registry; `fit_clinical_model` trains it on the CPU, seeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import Tensor, nn

from sonocad.errors import SonocadError

CLINICAL_FIELDS = ("age", "family_history", "brca_mutation", "breast_density")
DENSITY_CATEGORIES = ("a", "b", "c", "d")
HIDDEN_UNITS = (30, 60, 120, 60, 30)
MISSING = "missing"
_MISSING_TEXT = {"", "na", "n/a", "nan", "none", "unknown", "missing", "?"}
_YES = {"1", "yes", "y", "true", "positive", "pos"}
_NO = {"0", "no", "n", "false", "negative", "neg"}
_DENSITY_ALIASES = {"1": "a", "2": "b", "3": "c", "4": "d"}
# Spellings of each field's column, after `_folded`: the name itself is always accepted.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "age": ("age_years", "patient_age", "age_at_diagnosis"),
    "family_history": ("family_hx", "fhx", "family_history_of_breast_cancer",
                       "family_history_breast_cancer"),
    "brca_mutation": ("brca", "brca_status", "brca1_2", "brca1/2", "brca_carrier"),
    "breast_density": ("density", "birads_density", "bi_rads_density", "acr_density"),
}

ClinicalRecord = dict[str, float | str]  # parsed: age / binaries float (NaN), density str


def parse_clinical(cells: Mapping[str, str | None], where: str) -> ClinicalRecord:
    """One row's clinical cells as numbers (NaN when missing) and a density category.

    `where` names the row in errors (e.g. the table and image id).
    """
    cells = clinical_columns(cells, where)
    missing = [name for name in CLINICAL_FIELDS if name not in cells]
    if missing:
        raise SonocadError(f"{where}: no clinical column(s) {', '.join(missing)} (accepted "
                           "names: docs/clinical.md)")
    text = {name: (cells[name] or "").strip().lower() for name in CLINICAL_FIELDS}
    record: ClinicalRecord = {"age": _age(text["age"], where)}
    for name in ("family_history", "brca_mutation"):
        record[name] = _binary(text[name], name, where)
    density = _DENSITY_ALIASES.get(text["breast_density"], text["breast_density"])
    if density in _MISSING_TEXT:
        density = MISSING
    elif density not in DENSITY_CATEGORIES:
        raise SonocadError(f"{where}: breast_density {cells['breast_density']!r} is not a "
                           "BI-RADS category (a-d or 1-4)")
    record["breast_density"] = density
    return record


def clinical_columns(cells: Mapping[str, str | None], where: str) -> dict[str, str | None]:
    """`cells` with each clinical column under its field's name ("Family history" ->
    family_history); other columns as they were. Two columns for one field is an error."""
    spelling = {alias: field for field, aliases in COLUMN_ALIASES.items()
                for alias in (field, *aliases)}
    out: dict[str, str | None] = {}
    source: dict[str, str] = {}
    for name, value in cells.items():
        field = spelling.get(_folded(name), name)
        if field in source:
            raise SonocadError(f"{where}: columns {source[field]!r} and {name!r} both give "
                               f"{field}; keep one")
        source[field], out[field] = name, value
    return out


def _folded(name: str) -> str:
    return "_".join(name.strip().casefold().replace("-", " ").split())


def _age(text: str, where: str) -> float:
    if text in _MISSING_TEXT:
        return math.nan
    try:
        age = float(text)
    except ValueError:
        age = -1.0
    if not 0 < age < 130:
        raise SonocadError(f"{where}: age {text!r} is not an age in years")
    return age


def _binary(text: str, name: str, where: str) -> float:
    if text in _MISSING_TEXT:
        return math.nan
    if text in _YES or text in _NO:
        return float(text in _YES)
    raise SonocadError(f"{where}: {name} {text!r} is not yes/no (or 1/0, positive/negative)")


class ClinicalFeatures:
    """Parsed records -> float32 model inputs (11 columns), imputation fitted on training."""

    def __init__(self) -> None:
        self.transformer = ColumnTransformer([
            ("age", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                   StandardScaler()), [0]),
            ("binary", SimpleImputer(strategy="most_frequent", keep_empty_features=True),
             [1, 2]),
            ("missing", MissingIndicator(features="all"), [0, 1, 2]),
            ("density", OneHotEncoder(categories=[[*DENSITY_CATEGORIES, MISSING]]), [3]),
        ], sparse_threshold=0)

    def fit(self, records: Sequence[ClinicalRecord]) -> ClinicalFeatures:
        self.transformer.fit(_matrix(records))
        return self

    def transform(self, records: Sequence[ClinicalRecord]) -> np.ndarray:
        return self.transformer.transform(_matrix(records)).astype(np.float32)


def _matrix(records: Sequence[ClinicalRecord]) -> np.ndarray:
    if not records:
        raise SonocadError("no clinical records")
    return np.array([[r[name] for name in CLINICAL_FIELDS] for r in records], dtype=object)


class ClinicalMLP(nn.Module):
    """Inputs -> 30-60-120-60-30 hidden units (Linear, BatchNorm, ReLU) -> 2 logits."""

    def __init__(self, n_inputs: int, hidden: Sequence[int] = HIDDEN_UNITS,
                 n_classes: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for units in hidden:
            layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@dataclass
class ClinicalModel:
    """Fitted features and network: `predict_proba` gives each row's malignancy probability."""

    features: ClinicalFeatures
    network: ClinicalMLP

    @torch.no_grad()
    def predict_proba(self, records: Sequence[ClinicalRecord]) -> np.ndarray:
        self.network.eval()
        logits = self.network(torch.from_numpy(self.features.transform(records)))
        return torch.softmax(logits, dim=1)[:, 1].numpy().astype(float)


def fit_clinical_model(records: Sequence[ClinicalRecord], malignant: Sequence[int], *,
                       epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4,
                       batch_size: int = 32, seed: int = 0) -> ClinicalModel:
    """Fit features and MLP with Adam and cross-entropy (our choices: the paper does not give
    them); the same seed and rows give the same model. `malignant` is 1 for malignant rows."""
    y = torch.as_tensor(np.asarray(malignant), dtype=torch.int64)
    if len(y) != len(records) or not set(y.tolist()) <= {0, 1}:
        raise SonocadError("clinical training needs one 0/1 (benign/malignant) label per row")
    if len(set(y.tolist())) < 2:
        raise SonocadError("clinical training needs benign and malignant rows")
    features = ClinicalFeatures().fit(records)
    x = torch.from_numpy(features.transform(records))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = ClinicalMLP(x.shape[1])
        optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
        network.train()
        for _ in range(epochs):
            order = torch.randperm(len(y))
            for start in range(0, len(y), batch_size):
                batch = order[start:start + batch_size]
                if len(batch) < 2:  # batch norm needs two rows to normalise
                    continue
                loss = F.cross_entropy(network(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return ClinicalModel(features, network.eval())
