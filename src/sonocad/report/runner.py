"""`sonocad report FOLDER... --out report.html`: one self-contained HTML file of models and their
evaluations: training run folders, evaluate folders (the bundled model's too) and
cross-validation folders, in any mix.

Every folder is read and checked before anything is drawn, so a missing evaluation fails in one
line at once. The file inlines its figures as PNG data URIs and its style sheet, needs no
script and links nowhere outside itself: it can be mailed, archived or attached to a paper's
supplement as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sonocad import __version__
from sonocad.data.adapters import open_dataset
from sonocad.data.sample import Sample
from sonocad.errors import InputError, SonocadError
from sonocad.io.atomic import write_text
from sonocad.io.outputs import claim_output_file
from sonocad.report.card import data_sets
from sonocad.report.comparison import ANCHOR, comparison_section
from sonocad.report.cross_validation import (
    CrossValidation,
    folds_block,
    is_cross_validation,
    load_cross_validation,
)
from sonocad.report.examples import Example, explain_examples
from sonocad.report.html import Html, join, page, tag
from sonocad.report.sections import run_section, summary_section
from sonocad.report.sources import Run, load_run

TITLE = "Training and evaluation report"


def build_report(runs: Sequence[str | Path], out: str | Path, *,
                 evaluations: Sequence[str | Path] | None = None,
                 data: str | Path | None = None, layout: str | None = None,
                 examples: int = 3, compare: str | Path | None = None,
                 title: str = TITLE) -> Path:
    """Write the report of `runs` to `out`: run folders (evaluated at RUN/eval, or at
    `evaluations` in their order), evaluate folders and cross-validation folders. With `data`
    (the data set the evaluations read), `examples` test images per model get a heatmap;
    `compare` adds the tables of a `sonocad compare --out` file."""
    out = claim_output_file(out, inputs=[*runs, *(evaluations or ()),
                                         *(path for path in (data, compare) if path)])
    if not runs:
        raise SonocadError("no runs to report")
    if evaluations is not None and len(evaluations) != len(runs):
        raise SonocadError(f"--eval given {len(evaluations)} time(s) for {len(runs)} run(s); "
                           "give it once per RUN, in the same order")
    loaded = [_load(Path(run), evaluation) for run, evaluation
              in zip(runs, evaluations or [None] * len(runs), strict=True)]
    models = [item.pooled if isinstance(item, CrossValidation) else item for item in loaded]
    comparison = comparison_section(Path(compare)) if compare is not None else None
    samples = ({sample.image_id: sample for sample in open_dataset(data, layout)}
               if data is not None and examples > 0 else None)

    blocks: list[Html] = []
    contents: list[tuple[str, str]] = []
    if len(loaded) > 1:
        blocks.append(summary_section(models))
        contents.append(("summary", "Summary"))
    if comparison is not None:
        blocks.append(comparison)
        contents.append((ANCHOR, "Comparison"))
    for index, item in enumerate(loaded, start=1):
        if isinstance(item, CrossValidation):
            blocks.append(run_section(index, item.pooled, _no_heatmaps(item, examples),
                                      training=folds_block(item), kind="cross-validation"))
        else:
            blocks.append(run_section(index, item, _examples(item, samples, data, examples)))
        contents.append((f"run-{index}", f"{index}. {models[index - 1].name}"))
    write_text(out, page(title, _facts(models), contents, join(blocks),
                         tag("p", f"Written by sonocad {__version__}. Every number comes from "
                                  "the files named in its section.")))
    return out


def _load(folder: Path, evaluation: str | Path | None) -> Run | CrossValidation:
    if not is_cross_validation(folder):
        return load_run(folder, evaluation)
    if evaluation is not None:
        raise InputError(folder, "is a cross-validation, which brings its own evaluation "
                                 "(oof/); --eval goes with run folders")
    return load_cross_validation(folder)


def _examples(run: Run, samples: dict[str, Sample] | None, data: str | Path | None,
              count: int) -> list[Example] | str:
    """The run's heatmap examples, or why there are none (shown in their place)."""
    if count <= 0:
        return []
    if run.checkpoint is None:
        return (f"Heatmap examples need the model: {run.model_file}, which the evaluation's "
                "provenance.json names, is not there.")
    if samples is None or data is None:
        return (f"Heatmap examples need the test images: pass --data DIR (the data set the "
                f"evaluation read) to draw {count} of them.")
    return explain_examples(run, samples, Path(data), count)


def _no_heatmaps(cv: CrossValidation, count: int) -> list[Example] | str:
    """Why a cross-validation gets no heatmaps: its images were scored by several models."""
    if count <= 0:
        return []
    return join([f"Heatmaps show one model; the out-of-fold predictions come from "
                 f"{len(cv.summary['folds'])} fold models. Report a fold's own ",
                 tag("code", "sonocad evaluate"), " folder to see where that model looked."],
                sep="")


def _facts(runs: list[Run]) -> list[tuple[str, object]]:
    def unique(values: list[str]) -> str:
        return ", ".join(dict.fromkeys(values))

    training = [Path(names).name for run in runs
                if (names := data_sets(run.info.data))]
    return [
        ("Runs", unique([run.name for run in runs])),
        ("Models", unique([f"{run.model} ({run.info.task})" for run in runs])),
        ("Training data", unique(training) or "not recorded"),
        ("Test data", unique([f"{run.evaluation.get('split', '?')} "
                              f"({run.evaluation.get('n_images', '?')} images)"
                              for run in runs])),
        ("Generated", f"{datetime.now():%Y-%m-%d %H:%M}"),
    ]
