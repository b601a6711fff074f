"""Grouped, stratified train/val/test splits and K folds, and the split files that freeze them.

The unit that never crosses subsets is the connected component of patients and duplicate
groups: images of one patient stay together, members of one duplicate group stay together,
and both links chain (a duplicate of another patient's image pulls the two patients together).
Within that constraint scikit-learn's StratifiedGroupKFold balances the labels (label and
scanner pairs where a data set has several scanners, e.g. BUS-BRA).

A split file (JSON, format ``sonocad-split/1``) names images by `Sample.image_id`:

    {"format": "sonocad-split/1", "dataset": "BUSI", "seed": 0, "method": "...",
     "fractions": [0.7, 0.15, 0.15], "fingerprint": "<sha256 of the sorted image ids>",
     "subsets": {"train": [...], "val": [...], "test": [...]}}

K-fold files carry ``"k"`` and ``"test_fraction"`` instead of ``"fractions"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from sonocad.data.sample import Sample
from sonocad.errors import InputError, SonocadError
from sonocad.io.atomic import write_json

FORMAT = "sonocad-split/1"
SPLIT_NAMES = ("train", "val", "test")
_MAX_FOLDS = 100  # finest grain used to approximate fractions (1 %)


@dataclass(frozen=True)
class SplitFile:
    """Named, disjoint subsets of one dataset's image ids (each tuple sorted)."""

    dataset: str
    seed: int
    method: str
    subsets: dict[str, tuple[str, ...]]
    fractions: tuple[float, ...] | None = None
    k: int | None = None
    test_fraction: float | None = None

    @property
    def image_ids(self) -> list[str]:
        return sorted(i for ids in self.subsets.values() for i in ids)

    @property
    def fingerprint(self) -> str:
        """sha256 over the sorted image ids: names the exact set of images the split covers."""
        return fingerprint(self.image_ids)

    def to_dict(self) -> dict:
        out: dict = {"format": FORMAT, "dataset": self.dataset, "seed": self.seed,
                     "method": self.method}
        if self.fractions is not None:
            out["fractions"] = list(self.fractions)
        if self.k is not None:
            out["k"] = self.k
            out["test_fraction"] = self.test_fraction or 0.0
        out["fingerprint"] = self.fingerprint
        out["subsets"] = {name: sorted(ids) for name, ids in self.subsets.items()}
        return out


def fingerprint(image_ids: Iterable[str]) -> str:
    """sha256 (hex) of the sorted ids joined by newlines."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode("utf-8")).hexdigest()


# --- making splits ------------------------------------------------------------------------

def make_split(samples: Sequence[Sample], groups: Iterable[Sequence[str]], *,
               fractions: Sequence[float] = (0.70, 0.15, 0.15), seed: int = 0,
               dataset: str | None = None) -> SplitFile:
    """Train/val/test subsets of about `fractions` of the images, grouped and stratified.

    `groups` are duplicate groups (lists of image ids, e.g. from `find_duplicate_groups`);
    ids not among `samples` are ignored, so groups found on a larger set can be reused.
    """
    fractions = _check_fractions(fractions)
    ordered = sorted(samples, key=lambda s: s.image_id)
    labels, units = _labels(ordered), _units(ordered, groups)
    assignment, n_folds, counts = _partition(labels, units, fractions, seed)
    subsets = {name: _ids(ordered, assignment == i) for i, name in enumerate(SPLIT_NAMES)}
    empty = [name for name, share in zip(SPLIT_NAMES, fractions) if share > 0
             and not subsets[name]]
    if empty:
        raise SonocadError(f"{len(set(units))} independent units (patients / duplicate groups) "
                           f"are too few for fractions {'/'.join(map(str, fractions))}: the "
                           f"{empty[0]} subset would be empty; add data or change --fractions")
    method = (f"StratifiedGroupKFold({n_folds}) by {_strata_name(ordered)} over "
              "patient/duplicate-group units; "
              f"folds {'/'.join(map(str, counts))} to train/val/test")
    return SplitFile(dataset or _dataset_name(ordered), seed, method, subsets,
                     fractions=tuple(fractions))


def make_folds(samples: Sequence[Sample], groups: Iterable[Sequence[str]], *, k: int,
               seed: int = 0, test_fraction: float = 0.0,
               dataset: str | None = None) -> SplitFile:
    """Subsets fold0..fold{k-1} (each image in exactly one), after holding out an optional test
    subset of about `test_fraction`; grouped and stratified as in `make_split`."""
    if k < 2:
        raise SonocadError(f"K-fold needs k >= 2, got {k}")
    if not 0.0 <= test_fraction < 1.0:
        raise SonocadError(f"test fraction must be in [0, 1), got {test_fraction}")
    ordered = sorted(samples, key=lambda s: s.image_id)
    labels, units = _labels(ordered), _units(ordered, groups)
    method = (f"StratifiedGroupKFold({k}) by {_strata_name(ordered)} over "
              "patient/duplicate-group units")
    in_folds = np.ones(len(ordered), dtype=bool)
    if test_fraction > 0:
        assignment, n_folds, _ = _partition(labels, units, (1 - test_fraction, test_fraction),
                                            seed)
        in_folds = assignment == 0
        method += f"; test held out first with StratifiedGroupKFold({n_folds})"
    folds = np.full(len(ordered), -1)
    folds[in_folds] = _fold_index(labels[in_folds], units[in_folds], k, seed)
    subsets = {f"fold{i}": _ids(ordered, folds == i) for i in range(k)}
    if test_fraction > 0:
        subsets["test"] = _ids(ordered, ~in_folds)
    return SplitFile(dataset or _dataset_name(ordered), seed, method, subsets, k=k,
                     test_fraction=test_fraction)


def missing_classes(split: SplitFile, samples: Sequence[Sample]) -> list[str]:
    """One line per subset that lacks a class the data has: stratification could not spread
    so few images (an evaluation on that subset cannot score the class)."""
    label_of = {sample.image_id: sample.label for sample in samples}
    classes = sorted({label for label in label_of.values() if label})
    lines = []
    for name, ids in split.subsets.items():
        absent = sorted(set(classes) - {label_of.get(image_id) for image_id in ids})
        if ids and absent:
            lines.append(f"subset {name} has no {', '.join(absent)} image")
    return lines


def hold_out_scanner(split: SplitFile, samples: Sequence[Sample],
                     groups: Iterable[Sequence[str]], scanner: str) -> SplitFile:
    """Leave one scanner out: its images, and any image linked to one by patient or duplicate
    group, leave their subsets for a new ``held_out`` subset; the rest stay where they were."""
    in_split = set(split.image_ids)
    ordered = sorted((s for s in samples if s.image_id in in_split), key=lambda s: s.image_id)
    check_scanner(ordered, scanner, "the split")
    units = _units(ordered, groups)
    held_units = {u for s, u in zip(ordered, units) if s.scanner == scanner}
    held = {s.image_id for s, u in zip(ordered, units) if u in held_units}
    subsets = {name: tuple(i for i in ids if i not in held) for name, ids in split.subsets.items()}
    subsets["held_out"] = tuple(sorted(held))
    return SplitFile(split.dataset, split.seed, f"{split.method}; then every image of scanner "
                     f"{scanner!r} (and its patients' and duplicates') moved to held_out",
                     subsets, fractions=split.fractions, k=split.k,
                     test_fraction=split.test_fraction)


def check_scanner(samples: Iterable[Sample], scanner: str, where: str = "the data set") -> None:
    """Refuse a scanner no image of `samples` names (before minutes of hashing, not after)."""
    scanners = sorted({s.scanner for s in samples if s.scanner})
    if scanner not in scanners:
        raise SonocadError(f"no image of scanner {scanner!r} in {where} (scanners: "
                           f"{', '.join(scanners) or 'none named'})")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] == 0:
        raise SonocadError(f"fractions {values}: give train, val, test fractions, non-negative, "
                           "summing to 1, with some training data")
    return values


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    """The strata: the label, and the scanner too where the data set has several."""
    with_scanner = _several_scanners(samples)
    return np.array([(s.label or "") + (f"|{s.scanner}" if with_scanner else "")
                     for s in samples])  # unlabelled images form one class


def _several_scanners(samples: Sequence[Sample]) -> bool:
    return len({s.scanner for s in samples}) > 1


def _strata_name(samples: Sequence[Sample]) -> str:
    return "label and scanner" if _several_scanners(samples) else "label"


def _units(samples: Sequence[Sample], groups: Iterable[Sequence[str]]) -> np.ndarray:
    """Component index per sample of the graph linking same-patient and same-group images."""
    index = {s.image_id: i for i, s in enumerate(samples)}
    chains: list[list[int]] = []
    by_patient: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.patient_id:
            by_patient.setdefault(s.patient_id, []).append(i)
    chains.extend(by_patient.values())
    chains.extend([index[i] for i in group if i in index] for group in groups)
    # A chain a-b-c links a whole group with len-1 edges.
    rows = [a for chain in chains for a in chain[:-1]]
    cols = [b for chain in chains for b in chain[1:]]
    n = len(samples)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _fold_index(labels: np.ndarray, units: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per sample from StratifiedGroupKFold."""
    n_units = len(np.unique(units))
    if n_folds > n_units:
        raise SonocadError(f"cannot make {n_folds} folds from {n_units} independent units "
                           "(patients / duplicate groups)")
    folds = np.empty(len(labels), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A stratum smaller than n_folds (BUS-BRA's U-Systems malignant: 11) is spread as
        # evenly as it can be; scikit-learn's warning about it says nothing a user can act on.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, units)):
            folds[test] = i
    return folds


def _partition(labels: np.ndarray, units: np.ndarray, fractions: Sequence[float],
               seed: int) -> tuple[np.ndarray, int, list[int]]:
    """Subset index per sample: cut into equal folds, give each subset its share of folds."""
    # StratifiedGroupKFold needs no more folds than units, nor than the largest class.
    cap = min(len(np.unique(units)), max(np.unique(labels, return_counts=True)[1]))
    n_folds = _folds_for(fractions, cap)
    counts = _largest_remainder(fractions, n_folds)
    folds = _fold_index(labels, units, n_folds, seed)
    # The greedy fold filling favours low fold numbers for the first (largest) units, so deal
    # folds to subsets in a seeded random order rather than by number.
    order = np.random.default_rng(seed).permutation(n_folds)
    subset_of_fold = np.repeat(np.arange(len(fractions)), counts)[np.argsort(order)]
    return subset_of_fold[folds], n_folds, counts


def _folds_for(fractions: Sequence[float], cap: int) -> int:
    """The fewest folds that express `fractions` exactly (e.g. 20 for 0.70/0.15/0.15)."""
    exact = math.lcm(*(Fraction(f).limit_denominator(_MAX_FOLDS).denominator
                       for f in fractions))
    return max(2, min(exact, _MAX_FOLDS, cap))


def _largest_remainder(fractions: Sequence[float], n: int) -> list[int]:
    """Integer shares of `n` proportional to `fractions`; every non-zero fraction gets one."""
    raw = [f * n for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True):
        if sum(counts) == n:
            break
        counts[i] += 1
    for i, f in enumerate(fractions):  # a tiny fraction still gets a fold, taken from train
        if f > 0 and counts[i] == 0 and counts[0] > 1:
            counts[i], counts[0] = 1, counts[0] - 1
    return counts


def _ids(samples: Sequence[Sample], mask: np.ndarray) -> tuple[str, ...]:
    return tuple(sorted(s.image_id for s, keep in zip(samples, mask) if keep))


def _dataset_name(samples: Sequence[Sample]) -> str:
    """The dataset folder's name: the image path with its id taken off the end."""
    if not samples:
        return ""
    path, depth = samples[0].image_path, samples[0].image_id.count("/") + 1
    return path.parents[depth - 1].name if len(path.parents) >= depth else ""


# --- split files --------------------------------------------------------------------------

def write_split(path: str | Path, split: SplitFile) -> None:
    write_json(path, split.to_dict())


def read_split(path: str | Path) -> SplitFile:
    """Read and validate a split file; every problem is an InputError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such split file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, f"not a split file (expected \"format\": \"{FORMAT}\")")
    subsets = data.get("subsets")
    if (not isinstance(subsets, dict)
            or not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                       for ids in subsets.values())):
        raise InputError(path, "\"subsets\" must map subset names to lists of image ids")
    seen: dict[str, str] = {}
    for name, ids in subsets.items():
        for image_id in ids:
            if image_id in seen:
                raise InputError(path, f"image {image_id!r} is in both subsets "
                                       f"{seen[image_id]!r} and {name!r}")
            seen[image_id] = name
    try:
        split = SplitFile(
            dataset=str(data.get("dataset", "")), seed=int(data.get("seed", 0)),
            method=str(data.get("method", "")),
            subsets={name: tuple(sorted(ids)) for name, ids in subsets.items()},
            fractions=tuple(float(f) for f in data["fractions"]) if "fractions" in data else None,
            k=int(data["k"]) if "k" in data else None,
            test_fraction=float(data["test_fraction"]) if "test_fraction" in data else None)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"bad field value ({exc})") from None
    if "fingerprint" in data and data["fingerprint"] != split.fingerprint:
        raise InputError(path, "fingerprint does not match the image ids (was it edited?)")
    return split


def resolve_subset(spec: str) -> tuple[SplitFile, str]:
    """Parse ``FILE:SUBSET`` (e.g. ``split.json:test``) into the split and a subset it has."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise InputError(spec, "give a split subset as FILE:SUBSET, e.g. split.json:test")
    split = read_split(path)
    if name not in split.subsets:
        raise InputError(path, f"no subset {name!r}; it has {', '.join(split.subsets)}")
    return split, name


def select(samples: Sequence[Sample], ids: Iterable[str]) -> list[Sample]:
    """The samples named by `ids`, in that order; an error names ids the dataset lacks."""
    by_id = {s.image_id: s for s in samples}
    ids = list(ids)
    missing = [i for i in ids if i not in by_id]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise SonocadError(f"{len(missing)} image(s) in the split are not in the dataset: "
                           f"{shown}")
    return [by_id[i] for i in ids]
