"""The tables of a `sonocad compare --out FILE.json` file (`Comparison.to_dict()`), as HTML:
the JMIR 2026 Table 2 layout for segmentation and the QIMS 2023 one for classification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonocad.errors import InputError
from sonocad.evaluation.compare import format_p
from sonocad.report.html import Html, estimate, join, table, tag
from sonocad.report.sources import read_json
from sonocad.report.values import metric_label

ANCHOR = "comparison"


def comparison_section(path: Path) -> Html:
    comparison = read_json(path)
    if not {"a", "b", "n_joined", "participant_unit"} <= comparison.keys():
        raise InputError(path, "not a `sonocad compare --out FILE.json` file")
    unit = comparison["participant_unit"]
    names = [comparison[side].get("name") or f"Model {side.upper()}" for side in ("a", "b")]
    sources = [tag("p", join([tag("strong", f"{side.upper()}, {name}: "),
                              tag("code", comparison[side]["predictions"]),
                              f" ({comparison[side].get('model') or 'model not recorded'})"],
                             sep="")) for side, name in zip(("a", "b"), names)]
    blocks = [tag("h2", "Comparison"),
              tag("p", f"{comparison['n_joined']} test images evaluated by both models, joined "
                       f"on {comparison.get('join_key', 'image_id')}; participants are {unit}s. "
                       f"From {path}.", class_="lead"),
              *sources, *(tag("p", line, class_="small") for line in comparison.get("dropped", []))]
    if comparison.get("segmentation"):
        blocks.append(_segmentation(comparison["segmentation"], unit, names))
    if comparison.get("classification"):
        blocks.append(_classification(comparison["classification"], names))
    return tag("section", join(blocks), class_="block", id=ANCHOR)


def _segmentation(seg: dict[str, Any], unit: str, names: list[str]) -> Html:
    rows = [[metric_label(row["metric"]), _ci(row["a"]), _ci(row["b"]),
             _difference(row.get("difference")), _p(row["test"]["p_value"]), row["test"]["test"],
             str(row["test"]["n"])] for row in seg["rows"]]
    return join([
        tag("h3", "Segmentation (JMIR 2026 Table 2 layout)"),
        tag("p", f"Lesion images only: {seg['n_images']} images from {seg['n_participants']} "
                 f"participants. Mean over images with 95 % percentile bootstrap CI over "
                 f"{unit}s; P from per-participant means, paired t-test when Shapiro-Wilk "
                 "P ≥ 0.05 on the differences, else Wilcoxon signed-rank; n: participants.",
            class_="small"),
        table(["Metric", *names, "B - A (95 % CI)", "P", "Test", "n"], rows,
              numeric=[1, 2, 3, 4, 6], caption=f"Segmentation, {names[0]} against {names[1]}")])


def _classification(cls: dict[str, Any], names: list[str]) -> Html:
    differences = cls.get("differences", {})
    rows = [[metric_label(name), _rate(cls["rates_a"][name]), _rate(cls["rates_b"][name]),
             _difference(differences.get(name)), _p(cls["mcnemar"][name]["p_value"]),
             "McNemar exact"] for name in cls["rates_a"]]
    rows.append(["AUROC", _auroc(cls["auroc_a"]), _auroc(cls["auroc_b"]),
                 _difference(differences.get("AUROC")), _p(cls["delong"]["p_value"]), "DeLong"])
    scope = ("benign and malignant images only (other classes left out), predicted malignant "
             "or not" if cls["reduced"] else "all images")
    return join([
        tag("h3", "Classification (QIMS 2023 Table 2 layout)"),
        tag("p", f"Malignant is positive: {cls['n_malignant']} malignant and {cls['n_benign']} "
                 f"benign images; {scope}. 95 % exact Clopper-Pearson CIs (successes / total "
                 "beside them), AUROC with 95 % DeLong CI. P: exact McNemar (sensitivity on "
                 "malignant, specificity on benign, accuracy on all images); DeLong test for "
                 "the AUROCs.", class_="small"),
        table(["Metric", *names, "B - A (95 % CI)", "P", "Test"], rows, numeric=[1, 2, 3, 4],
              caption=f"Classification, {names[0]} against {names[1]}")])


def _difference(difference: dict[str, Any] | None) -> Html | str:
    """B - A with its 95 % CI; a dash where the comparison file has none (an older one)."""
    if not difference:
        return "—"
    return estimate(difference["estimate"], difference.get("ci_low"), difference.get("ci_high"))


def _ci(stat: dict[str, Any]) -> Html:
    return estimate(stat["mean"], stat.get("ci_low"), stat.get("ci_high"))


def _rate(rate: dict[str, Any]) -> Html:
    return Html(estimate(rate["estimate"], rate["ci_low"], rate["ci_high"])
                + tag("span", f"{rate['successes']}/{rate['total']}", class_="ci"))


def _auroc(auroc: dict[str, Any]) -> Html:
    return estimate(auroc["auroc"], auroc["ci_low"], auroc["ci_high"])


def _p(p_value: float | None) -> str:
    return "n/a" if p_value is None else format_p(float(p_value))
