"""QIMS 2023 combined models: image score + clinical score, for lesions the image model missed.

The image model calls a lesion malignant when its malignancy score reaches the Youden
threshold of its training ROC. The paper then re-reads the lesions it called benign with a
model on two inputs, (image score, clinical score): a logistic regression or a decision tree.
Here both are fitted on training rows only:

- the threshold of the image model: Youden's J on the training rows;
- the combined model: fitted on the training rows the image model called benign (falling back
  to all training rows when those hold fewer than 2 x `folds` lesions of either class, which is
  recorded in `CombinedModel.fitted_on`), its hyper-parameters chosen by stratified K-fold
  cross-validation on AUROC (LogisticRegressionCV over C; GridSearchCV over the tree's depth
  and leaf size);
- its own operating threshold: Youden's J on cross-validated (out-of-fold) probabilities of
  those rows, since a model fitted to few malignant rows rarely reaches 0.5.

`qims_table` gives the paper's Table 2 layout: sensitivity, specificity and accuracy with
exact (Clopper-Pearson) 95 % CIs for the image model and each combined model on the same test
lesions, with the exact McNemar test of each combined model's correctness against the image
model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.tree import DecisionTreeClassifier

from sonocad.errors import SonocadError
from sonocad.evaluation.statistics import binary_rates, mcnemar_exact, youden_point

LOGISTIC = "logistic_regression"
TREE = "decision_tree"
COMBINED_KINDS = (LOGISTIC, TREE)
TREE_GRID = {"max_depth": [1, 2, 3, 4, 5], "min_samples_leaf": [1, 5, 10, 20]}
RATES = ("sensitivity", "specificity", "accuracy")


def image_threshold(malignant: ArrayLike, image_score: ArrayLike) -> float:
    """The image model's operating point: Youden's J on (training) scores."""
    return youden_point(np.asarray(malignant), image_score).threshold


@dataclass
class CombinedModel:
    """A fitted combined model and the two thresholds that make it a decision rule."""

    kind: str
    estimator: BaseEstimator
    image_threshold: float
    threshold: float  # on the estimator's malignancy probability
    fitted_on: str

    def probability(self, image_score: ArrayLike, clinical_score: ArrayLike) -> np.ndarray:
        return self.estimator.predict_proba(_inputs(image_score, clinical_score))[:, 1]

    def predict(self, image_score: ArrayLike, clinical_score: ArrayLike) -> np.ndarray:
        """Malignant (True) where the image model says so, else where the combined model does."""
        called_malignant = np.asarray(image_score, dtype=float) >= self.image_threshold
        return called_malignant | (self.probability(image_score, clinical_score)
                                   >= self.threshold)


def fit_combined(kind: str, image_score: ArrayLike, clinical_score: ArrayLike,
                 malignant: ArrayLike, threshold: float, *, folds: int = 5,
                 seed: int = 0) -> CombinedModel:
    """Fit one combined model on training rows (see the module notes for which rows)."""
    x = _inputs(image_score, clinical_score)
    y = np.asarray(malignant, dtype=int)
    called_benign = x[:, 0] < threshold
    check_lesion_counts(y, folds)
    if min(np.bincount(y[called_benign], minlength=2)) >= 2 * folds:
        rows, fitted_on = called_benign, "training lesions the image model called benign"
    else:
        rows, fitted_on = np.ones_like(called_benign), (
            "all training lesions (too few of a class among those called benign)")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    estimator = _estimator(kind, cv, seed)
    out_of_fold = cross_val_predict(estimator, x[rows], y[rows], cv=cv,
                                    method="predict_proba")[:, 1]
    operating = youden_point(y[rows], out_of_fold).threshold
    estimator.fit(x[rows], y[rows])
    return CombinedModel(kind, estimator, float(threshold), float(operating),
                         f"{fitted_on} (n={int(rows.sum())})")


def check_lesion_counts(malignant: ArrayLike, folds: int) -> None:
    """Refuse fitting rows with too few of a class, saying how many there are: nested
    cross-validation (out-of-fold probabilities around the hyper-parameter search) needs
    about two folds' worth of each class."""
    benign, malignant_count = np.bincount(np.asarray(malignant, dtype=int), minlength=2)[:2]
    needed = 2 * folds
    if min(benign, malignant_count) < needed:
        raise SonocadError(f"combined models need at least {needed} benign and {needed} "
                           f"malignant training lesions; the fitting table has {benign} "
                           f"benign and {malignant_count} malignant")


def _estimator(kind: str, cv: StratifiedKFold, seed: int) -> BaseEstimator:
    if kind == LOGISTIC:
        return LogisticRegressionCV(Cs=10, cv=cv, scoring="roc_auc", l1_ratios=(0.0,),
                                    use_legacy_attributes=False)
    if kind == TREE:
        return GridSearchCV(DecisionTreeClassifier(random_state=seed), TREE_GRID, cv=cv,
                            scoring="roc_auc")
    raise SonocadError(f"unknown combined model {kind!r}; known: {', '.join(COMBINED_KINDS)}")


def _inputs(image_score: ArrayLike, clinical_score: ArrayLike) -> np.ndarray:
    return np.column_stack([np.asarray(image_score, dtype=float),
                            np.asarray(clinical_score, dtype=float)])


def qims_table(malignant: ArrayLike,
               predictions: Mapping[str, ArrayLike]) -> list[dict[str, Any]]:
    """Table 2 rows: per model its rates (`Proportion`s with exact CIs) and McNemar against
    the first model (the image model) on per-lesion correctness."""
    truth = np.asarray(malignant, dtype=bool)
    items = [(name, np.asarray(p, dtype=bool)) for name, p in predictions.items()]
    reference = items[0][1] == truth
    return [{"model": name, **binary_rates(truth, predicted),
             "mcnemar": None if i == 0 else mcnemar_exact(predicted == truth, reference)}
            for i, (name, predicted) in enumerate(items)]


def format_qims_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The rows as text: 'percent (successes/total; CI low-high)' per rate, McNemar P."""
    width = max(len(row["model"]) for row in rows)
    header = f"{'model':<{width}}  " + "  ".join(f"{name:<27}" for name in RATES) + "  McNemar P"
    lines = [title, header]
    for row in rows:
        cells = [_rate(row[name]) for name in RATES]
        p = "-" if row["mcnemar"] is None else f"{row['mcnemar'].p_value:.3f}"
        lines.append(f"{row['model']:<{width}}  " + "  ".join(f"{c:<27}" for c in cells)
                     + f"  {p}")
    return "\n".join(lines)


def _rate(value: Any) -> str:
    if not value.total:
        return "n/a"
    return (f"{100 * value.estimate:.1f}% ({value.successes}/{value.total}; "
            f"{100 * value.ci_low:.1f}-{100 * value.ci_high:.1f})")
