# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Predict, evaluate and compare two models on BUSI
#
# This notebook uses sonocad's Python API ([docs/api.md](../api.md)) on real images: the
# public BUSI data set (Al-Dhabyani et al., 2020; Cairo, 780 images of normal, benign and
# malignant breasts). It predicts one image, evaluates two models on the same held-out images
# and compares them pair by pair.
#
# **What is compared.** The bundled default model is a deep ensemble of two EfficientNet-Lite0
# U-Nets trained by `recipes/default.yaml` on BUSI and BUS-BRA; their logits are averaged. The
# members differ in one thing: the second also learned lesion-free windows of every scanner's
# images as normal tissue. The question: *what does the ensemble add to its first member alone*
# (the one trained on whole images only)? Both come from the same file, with the same recipe
# and preprocessing, so the comparison isolates what adding the second member does.
#
# **Which images.** The frozen test subset of `benchmarks/splits/busi.json` (117 images). No
# model here trained on it, and nothing was chosen on it (the ensemble's decision rule was
# fitted on validation images). By default the notebook takes the first
# `IMAGES_PER_CLASS` images of each class in the file's order (not hand-picked), so that it
# runs in a minute on a laptop's CPU. **Twelve images make wide confidence intervals: do not
# quote them.** Set `IMAGES_PER_CLASS = None` for the whole test subset (a few minutes on a
# CPU); the bundled model's figures on all of it are in its model card and
# [docs/benchmarks.md](../benchmarks.md).
#
# Stored as a jupytext "percent" script: open it in Jupyter (with jupytext installed) or run
# it as plain Python. The test suite runs it on two images per class
# (`tests/test_notebook.py`).

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from sonocad.checkpoint import Checkpoint, bundled_checkpoint, save_checkpoint
from sonocad.data.adapters import open_dataset
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.evaluation.compare import compare_evaluations, format_comparison
from sonocad.inference.predictor import Predictor
from sonocad.predictions import read_predictions
from sonocad.workflows.evaluate import evaluate

# The sonocad checkout: this folder or one above it (the frozen splits live there).
ROOT = next(folder for folder in [Path.cwd(), *Path.cwd().parents]
            if (folder / "benchmarks" / "splits" / "busi.json").is_file())

# %% tags=["parameters"]
IMAGES_PER_CLASS = 4  # None: all 117 test images
N_BOOT = 2000  # bootstrap resamples behind every CI
BUSI = ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"  # where BUSI is
WORK = None  # where the outputs go; None: a new temporary folder

# %% [markdown]
# ## The images
#
# A subset of a frozen split is itself a split file: the chosen test ids under `test`, so that
# `evaluate` (which takes `FILE:SUBSET`) scores exactly those images.

# %%
if not (BUSI / "benign").is_dir():
    raise FileNotFoundError(f"BUSI is not at {BUSI}: set BUSI in the cell above")
WORK = Path(WORK) if WORK else Path(tempfile.mkdtemp(prefix="sonocad-busi-"))
samples = {sample.image_id: sample for sample in open_dataset(BUSI)}
frozen = read_split(ROOT / "benchmarks" / "splits" / "busi.json")
test_ids = frozen.subsets["test"]
if IMAGES_PER_CLASS is None:
    chosen = test_ids
else:
    chosen = tuple(image_id for label in ("normal", "benign", "malignant")
                   for image_id in [i for i in test_ids if samples[i].label == label]
                   [:IMAGES_PER_CLASS])
subset = WORK / "busi_test_subset.json"
write_split(subset, SplitFile(
    dataset="BUSI", seed=frozen.seed, subsets={"test": chosen},
    method=f"first {IMAGES_PER_CLASS or 'all'} images per class of busi.json:test"))
print(f"{len(chosen)} of BUSI's {len(test_ids)} test images; outputs in {WORK}")

# %% [markdown]
# ## 1. Predict one image
#
# `Predictor.default()` runs the bundled model (on ONNX Runtime where it is installed) on the
# first malignant image of the subset. A `Prediction` holds the lesion probability map at the
# image's own size, the class head's probabilities and, since the default model carries a
# decision rule, the final call with its low-confidence flag and calibrated P(malignant). Where
# the figure shows no red outline, the model outlined nothing: a missed lesion, which the
# tables below count like any other.

# %%
predictor = Predictor.default()
sample = samples[next(i for i in chosen if samples[i].label == "malignant")]
image = sample.load_image()
[prediction] = predictor.predict_images([image])
print(sample.image_id, "- truth:", sample.label)
print("class head:", {name: round(p, 3) for name, p in prediction.class_probabilities.items()})
decision = prediction.decision
print(f"final call: {decision.final_class}; low confidence: {decision.low_confidence}; "
      f"P(malignant) {decision.p_malignant:.3f}")
print("lesions outlined:", len(prediction.lesions(image.spacing_mm)))

truth = sample.load_mask(image.shape)
figure, axis = plt.subplots(figsize=(6, 4.5))
axis.imshow(image.pixels, cmap="gray")
axis.contour(truth, levels=[0.5], colors="lime", linewidths=1.5)
axis.contour(prediction.lesion_probability, levels=[0.5], colors="red", linewidths=1.5)
axis.set_title(f"{sample.image_id}: truth (green), default model (red)")
axis.axis("off")
plt.show()

# %% [markdown]
# ## 2. The two models
#
# A: the bundled ensemble, `"default"` to `evaluate`. B: its first member, taken out of the
# same checkpoint: the weights under `members.0.`, the member's model spec, the same
# preprocessing and classes. The ensemble's decision rule is left out of B, because it was
# fitted on the ensemble's outputs; `compare` reads the raw heads (the lesion map at 0.5, the
# class probabilities and their argmax), which both models have, so the rule plays no part in
# the comparison.

# %%
ensemble = bundled_checkpoint()
member_meta = {key: value for key, value in ensemble.meta.items()
               if key not in ("decision", "decision_fit", "test_metrics", "members")}
member_meta.update(model=ensemble.info.model.args["members"][0], metrics={})
member_weights = {key.removeprefix("members.0."): weights
                  for key, weights in ensemble.state_dict.items()
                  if key.startswith("members.0.")}
save_checkpoint(WORK / "first_member.pt", Checkpoint(member_meta, member_weights))
print(ensemble.info.model.name, "->", member_meta["model"]["name"],
      f"({len(member_weights)} of {len(ensemble.state_dict)} tensors)")

# %% [markdown]
# ## 3. Evaluate both
#
# `evaluate` is `sonocad evaluate`: each model scores the same subset, and each folder gets a
# predictions table, `metrics.json` with 95 % bootstrap CIs, figures and `provenance.json`.

# %%
subset_spec = f"{subset}:test"
results = {
    "A": evaluate("default", BUSI, subset_spec, WORK / "ensemble", overlays=0, n_boot=N_BOOT),
    "B": evaluate(WORK / "first_member.pt", BUSI, subset_spec, WORK / "first_member",
                  overlays=0, n_boot=N_BOOT),
}


def with_ci(figure: dict) -> str:
    return f"{figure['mean']:.3f} ({figure['ci_low']:.3f}-{figure['ci_high']:.3f}), n={figure['n']}"


for name, result in results.items():
    parts = result.metrics["parts"]
    print(f"{name}: {result.metrics['model']}")
    print("  lesion Dice:              ",
          with_ci(parts["segmentation"]["groups"]["lesion"]["dice"]))
    print("  benign-vs-malignant AUROC:",
          with_ci(parts["classification"]["groups"]["all"]["benign_vs_malignant_auroc"]))

# %% [markdown]
# ## 4. Read the predictions tables
#
# `read_predictions` gives each table back as rows (numbers parsed, ids as text), for
# statistics of your own. Image by image, side by side:

# %%
tables = {name: {row["image_id"]: row for row in read_predictions(result.out_dir /
                                                                   "predictions.csv")}
          for name, result in results.items()}
print(f"{'image':<30} {'truth':<10} {'Dice A':>7} {'Dice B':>7}  {'call A':<10} call B")
for image_id in chosen:
    a, b = tables["A"][image_id], tables["B"][image_id]
    print(f"{image_id:<30} {a['label']:<10} {a['dice']:>7.3f} {b['dice']:>7.3f}  "
          f"{a['predicted_class']:<10} {b['predicted_class']}")

# %% [markdown]
# ## 5. Compare
#
# `compare_evaluations` is `sonocad compare`: it joins the two tables on `image_id` and gives
# each segmentation metric on lesion images (mean and bootstrap CI per model, P from a paired
# test) and the malignant-vs-benign rates and AUROC (exact CIs, McNemar, DeLong), each with the
# paired difference B - A and its 95 % CI. BUSI has no patient ids, so images are the unit.

# %%
comparison = compare_evaluations(WORK / "ensemble", WORK / "first_member", n_boot=N_BOOT)
print(format_comparison(comparison))

# %%
dice = next(row for row in comparison.segmentation.rows if row.metric == "dice")
print(f"lesion Dice, first member - ensemble: {dice.difference.estimate:+.3f} "
      f"(95 % CI {dice.difference.ci_low:.3f} to {dice.difference.ci_high:.3f}), "
      f"P = {dice.test.p_value:.3f} ({dice.test.test}, {dice.test.n} images)")

# %% [markdown]
# ## What this shows, and what it does not
#
# The difference B - A and its CI answer the question on *these* images. On the default
# twelve, a CI that spans zero says only that twelve images cannot tell the models apart; it is
# not evidence that they are equal. For a claim, run the whole test subset
# (`IMAGES_PER_CLASS = None`), keep `N_BOOT = 2000`, and repeat on a second data set
# (BUS-BRA's frozen split, `benchmarks/splits/busbra.json`, where patient ids make the patient
# the unit): a model that helps on one scanner population may not on another. Run as
# commands, the same study is `sonocad evaluate` twice and `sonocad compare A B`.
