"""`sonocad report RUN... --out report.html`: one self-contained HTML file for training runs.

Every run is read and checked before anything is drawn, so a missing evaluation fails in one
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
from sonocad.errors import SonocadError
from sonocad.io.atomic import write_text
from sonocad.io.outputs import claim_output_file
from sonocad.report.comparison import ANCHOR, comparison_section
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
    """Write the report of `runs` (evaluated at RUN/eval, or at `evaluations` in run order)
    to `out`. With `data` (the data set the evaluations read), `examples` test images per
    run get a heatmap; `compare` adds the tables of a `sonocad compare --out` file."""
    out = claim_output_file(out, inputs=[*runs, *(evaluations or ()),
                                         *(path for path in (data, compare) if path)])
    if not runs:
        raise SonocadError("no runs to report")
    if evaluations is not None and len(evaluations) != len(runs):
        raise SonocadError(f"--eval given {len(evaluations)} time(s) for {len(runs)} run(s); "
                           "give it once per RUN, in the same order")
    loaded = [load_run(run, evaluation) for run, evaluation
              in zip(runs, evaluations or [None] * len(runs), strict=True)]
    comparison = comparison_section(Path(compare)) if compare is not None else None
    samples = ({sample.image_id: sample for sample in open_dataset(data, layout)}
               if data is not None and examples > 0 else None)

    blocks: list[Html] = []
    contents: list[tuple[str, str]] = []
    if len(loaded) > 1:
        blocks.append(summary_section(loaded))
        contents.append(("summary", "Summary"))
    if comparison is not None:
        blocks.append(comparison)
        contents.append((ANCHOR, "Comparison"))
    for index, run in enumerate(loaded, start=1):
        heatmaps = _examples(run, samples, data, examples)
        blocks.append(run_section(index, run, heatmaps))
        contents.append((f"run-{index}", f"{index}. {run.name}"))
    write_text(out, page(title, _facts(loaded), contents, join(blocks),
                         tag("p", f"Written by sonocad {__version__}. Every number comes from "
                                  "the runs' files named in its section.")))
    return out


def _examples(run: Run, samples: dict[str, Sample] | None, data: str | Path | None,
              count: int) -> list[Example] | str:
    """The run's heatmap examples, or why there are none (shown in their place)."""
    if count <= 0:
        return []
    if samples is None or data is None:
        return (f"Heatmap examples need the test images: pass --data DIR (the data set the "
                f"evaluation read) to draw {count} of them.")
    return explain_examples(run, samples, Path(data), count)


def _facts(runs: list[Run]) -> list[tuple[str, object]]:
    def unique(values: list[str]) -> str:
        return ", ".join(dict.fromkeys(values))

    training = [Path(run.meta["data"]["path"]).name for run in runs
                if run.meta.get("data", {}).get("path")]
    return [
        ("Runs", unique([run.name for run in runs])),
        ("Models", unique([f"{run.model} ({run.meta['task']})" for run in runs])),
        ("Training data", unique(training) or "not recorded"),
        ("Test data", unique([f"{run.evaluation.get('split', '?')} "
                              f"({run.evaluation.get('n_images', '?')} images)"
                              for run in runs])),
        ("Generated", f"{datetime.now():%Y-%m-%d %H:%M}"),
    ]
