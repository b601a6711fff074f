"""The `sonocad` command: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sonocad import __version__
from sonocad.errors import SonocadError
from sonocad.io.outputs import claim_output_file, release_claims

Handler = Callable[[argparse.Namespace], int]

# `sonocad.data.adapters.ADAPTERS`' names, written out: the CLI imports no data code to start.
LAYOUT_HELP = "busi, busbra, folder, voc, labelme or manifest (default: detect)"

# Exit codes: all good; some inputs failed (the batch carried on); usage or fatal error.
EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2
OUTPUT_RULE = ("a new or empty folder, or an earlier output of this command with --overwrite "
               "(which replaces it wholesale); never a folder holding an input")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may stand anywhere after the command, even after its options.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-")
                                                    for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings():
            return args.handler(args)
    except SonocadError as exc:
        print(f"sonocad: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OSError as exc:  # the machine's, not ours: a full or read-only disk, a permission
        print(f"sonocad: error: {_environment_problem(exc)}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("sonocad: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("sonocad: error: out of memory", file=sys.stderr)
        return EXIT_FATAL
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("SONOCAD_DEBUG"):
            raise
        message = " ".join(str(exc).split())
        print(f"sonocad: internal error: {type(exc).__name__}: {message} (a bug in sonocad: "
              "please report it; SONOCAD_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_FATAL
    finally:
        release_claims()


_ENVIRONMENT_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another --out",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "no permission: choose a folder you may write, or ask for access",
    errno.EPERM: "no permission: choose a folder you may write, or ask for access",
}


def _environment_problem(exc: OSError) -> str:
    """One line for an operating-system failure: the file, what the system said, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    said = exc.strerror or type(exc).__name__
    hint = _ENVIRONMENT_HINTS.get(exc.errno)
    return " ".join(f"{where}{said}{f' ({hint})' if hint else ''}".split())


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """A library's warning (pydicom, Pillow, numpy) as one line, each text once: Python's own
    format adds the install path and the source line that warned."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"sonocad: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonocad", description="AI for breast ultrasound: segmentation, classification, "
        "detection, statistics and reports.")
    parser.add_argument("--version", action="version", version=f"sonocad {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_data_commands(commands)
    _add_register_command(commands)
    _add_train_command(commands)
    _add_evaluate_command(commands)
    _add_compare_command(commands)
    _add_report_command(commands)
    _add_combine_command(commands)
    _add_inference_commands(commands)
    _add_serve_command(commands)
    return parser


def _command(commands, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help, description=help)
    sub.set_defaults(handler=handler)
    return sub


def _add_output_folder(sub: argparse.ArgumentParser, meaning: str) -> None:
    sub.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help=f"{meaning}: {OUTPUT_RULE}")
    sub.add_argument("--overwrite", action="store_true",
                     help="replace an earlier output of this command in --out (only files "
                          "sonocad wrote are removed)")


# --- data ---------------------------------------------------------------------------------

def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="check, split and synthesise datasets",
                               description="Check, split and synthesise datasets.")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")

    check = _command(data_commands, "check", _data_check,
                     "report class counts, sizes, duplicates and every problem, file by file")
    check.add_argument("dataset", type=Path, help="dataset folder or CSV manifest")
    check.add_argument("--layout", help=LAYOUT_HELP)
    check.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")

    split = _command(data_commands, "split", _data_split,
                     "split by patient and duplicate group, stratified by class")
    split.add_argument("dataset", type=Path, help="dataset folder or CSV manifest")
    split.add_argument("--layout", help=LAYOUT_HELP)
    split.add_argument("--out", type=Path, required=True, help="split JSON to write")
    split.add_argument("--folds", type=int, default=0,
                       help="K for K-fold subsets fold0..fold{K-1} (default: train/val/test)")
    split.add_argument("--fractions", default="0.70,0.15,0.15",
                       help="train,val,test fractions (default 0.70,0.15,0.15)")
    split.add_argument("--test-fraction", type=float, default=0.0,
                       help="with --folds: hold out this fraction as a test subset first")
    split.add_argument("--by", choices=["patient"], default="patient",
                       help="grouping unit (patient id where the data has one, else image); "
                            "duplicate groups are always kept together")
    split.add_argument("--seed", type=int, default=0, help="random seed of the split (0)")
    split.add_argument("--hold-out-scanner", metavar="NAME",
                       help="leave this scanner out: its images (and their patients') go to a "
                            "held_out subset, for a test on a scanner never trained on")

    phantom = _command(data_commands, "phantom", _data_phantom,
                       "write a synthetic ultrasound phantom dataset (BUSI layout) for demos")
    phantom.add_argument("out", type=Path, help=f"folder to create: {OUTPUT_RULE}")
    phantom.add_argument("--overwrite", action="store_true",
                         help="replace an earlier `data phantom` output in OUT")
    phantom.add_argument("--per-class", type=int, default=4, help="images per class (4)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (0)")


def _data_check(args: argparse.Namespace) -> int:
    from sonocad.data.adapters import open_dataset
    from sonocad.data.check import check_dataset, format_report
    from sonocad.io.atomic import write_json
    from sonocad.progress import progress

    samples = open_dataset(args.dataset, args.layout)
    if args.json:
        claim_output_file(args.json, inputs=_dataset_files(args.dataset, samples))
    report = check_dataset(args.dataset, samples,
                           progress=lambda it: progress(it, "checking", unit="images"))
    print(format_report(report))
    if args.json:
        write_json(args.json, report.to_dict())
    return EXIT_SOME_FAILED if report.errors else EXIT_OK


def _data_split(args: argparse.Namespace) -> int:
    from sonocad.data.adapters import open_dataset
    from sonocad.data.duplicates import find_duplicate_groups
    from sonocad.data.split import (
        check_scanner,
        hold_out_scanner,
        make_folds,
        make_split,
        missing_classes,
        write_split,
    )

    samples = open_dataset(args.dataset, args.layout)
    claim_output_file(args.out, inputs=_dataset_files(args.dataset, samples))
    if args.hold_out_scanner:
        check_scanner(samples, args.hold_out_scanner)
    groups = [group.image_ids for group in find_duplicate_groups(samples)]
    if args.folds:
        split = make_folds(samples, groups, k=args.folds, seed=args.seed,
                           test_fraction=args.test_fraction)
    else:
        split = make_split(samples, groups, fractions=_fractions(args.fractions), seed=args.seed)
    if args.hold_out_scanner:
        split = hold_out_scanner(split, samples, groups, args.hold_out_scanner)
    write_split(args.out, split)
    for name, ids in split.subsets.items():
        print(f"{name}: {len(ids)} images")
    for line in missing_classes(split, samples):
        print(f"sonocad: warning: {line}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def _dataset_files(dataset: Path, samples) -> list[Path]:
    """What a data command reads: the folder or manifest, and every image and mask it names
    (a manifest's images may lie anywhere)."""
    files = [sample.image_path for sample in samples]
    files += [mask for sample in samples for mask in sample.mask_paths]
    return [dataset, *files]


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or abs(sum(values) - 1) > 1e-6 or min(values) < 0:
        raise SonocadError(f"--fractions {text!r}: give three non-negative numbers summing to 1")
    return values  # type: ignore[return-value]


def _data_phantom(args: argparse.Namespace) -> int:
    from sonocad.data.phantom import write_phantom_dataset
    from sonocad.io.outputs import claim_output_dir

    claim_output_dir(args.out, "data phantom", overwrite=args.overwrite)
    paths = write_phantom_dataset(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {len(paths)} phantom images to {args.out}")
    return 0


# --- register -----------------------------------------------------------------------------

def _add_register_command(commands) -> None:
    from sonocad.registration.fields import FIELD_HELP

    register = _command(commands, "register", _register,
                        "map a slide's cancer outlines onto the ultrasound needle tract: tract "
                        "crop, VOC and Labelme masks, overlay (docs/registration.md)")
    register.add_argument("image", nargs="?", type=Path,
                          help="the pre-fire ultrasound image (omit with --batch)")
    register.add_argument("--batch", type=Path, metavar="CSV",
                          help="one biopsy per row, columns named as the options below "
                               "(post_fire for --post-fire); the options fill blank cells")
    register.add_argument("--out", type=Path, required=True, metavar="DIR",
                          help="dataset folder to write (VOC layout and manifest.csv): a new "
                               "or empty folder, or an earlier register dataset, which grows")
    register.add_argument("--overwrite", action="store_true",
                          help="start an earlier register dataset in --out afresh")
    for name, (metavar, meaning) in FIELD_HELP.items():
        if name != "image":
            register.add_argument(f"--{name.replace('_', '-')}", metavar=metavar, help=meaning)


def _register(args: argparse.Namespace) -> int:
    from sonocad.registration.fields import FIELDS
    from sonocad.registration.runner import describe, register_batch, register_one

    fields = {name: str(getattr(args, name)) for name in FIELDS
              if getattr(args, name) is not None}
    if (args.image is None) == (args.batch is None):
        raise SonocadError("register: give the pre-fire IMAGE or --batch CSV (one of them)")
    if args.image is not None:
        print(describe(register_one(fields, args.out, overwrite=args.overwrite)))
        print(f"wrote {args.out}")
        return EXIT_OK
    result = register_batch(args.batch, args.out, fields, overwrite=args.overwrite)
    print(f"registered {len(result.registered)} biopsies into {result.out_dir}")
    for failure in result.failures:
        print(f"sonocad: failed: {failure}", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failures else EXIT_OK


# --- train / evaluate ---------------------------------------------------------------------

def _add_train_command(commands) -> None:
    train = _command(commands, "train", _train,
                     "train a model from a recipe (runs under torchrun for several processes)")
    train.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="recipe overrides, e.g. max_steps=2 optimizer.lr=3e-4")
    train.add_argument("--data", type=Path, action="append", metavar="DIR",
                       help="dataset folder or CSV manifest; once per data source, each with "
                            "its --split in the same order (default: the recipe's data.sources)")
    train.add_argument("--split", type=Path, action="append", metavar="FILE",
                       help="split JSON (sonocad data split), one per --data")
    _add_output_folder(train, "run folder to write")
    train.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    train.add_argument("--init", metavar="CHECKPOINT",
                       help="start from a trained model's weights: 'default' (the bundled "
                            "model) or a checkpoint (model and classes must match the "
                            "recipe's); a fresh optimiser and schedule (the recipe's "
                            "model.init)")
    train.add_argument("--folds", choices=["all"],
                       help="cross-validation: train one model per fold of a K-fold --split "
                            "(each selected on its own fold), then pool their out-of-fold "
                            "predictions (RUN/oof) and summarise the folds (RUN/cv_summary.md)")


def _train(args: argparse.Namespace) -> int:
    from sonocad.engine.recipe import load_recipe
    from sonocad.engine.trainer import train

    overrides = [*args.overrides, *([f"model.init={args.init}"] if args.init else [])]
    recipe = load_recipe(args.recipe, overrides)
    if args.folds:
        return _cross_validate(recipe, args)
    result = train(recipe, args.data, args.split, args.out, resume=args.resume,
                   overwrite=args.overwrite)
    print(f"best {result.select_metric} {result.best_value:.4f} after {result.steps} steps: "
          f"{result.best_checkpoint}")
    if recipe.task == "multitask":  # one answer per image: the rule, on validation images
        from sonocad.workflows.decision_fit import fit_run_decision

        rule = fit_run_decision(result.best_checkpoint, recipe, args.data, args.split)
        print(f"decision rule fitted on the {rule.chosen_on}")
    return 0


def _cross_validate(recipe: dict, args: argparse.Namespace) -> int:
    from sonocad.workflows.cross_validation import cross_validate, summary_table

    if len(args.data or []) != 1 or len(args.split or []) != 1:
        raise SonocadError("--folds all takes one --data and its K-fold --split")
    result = cross_validate(recipe, args.data[0], args.split[0], args.out, resume=args.resume,
                            overwrite=args.overwrite)
    print(summary_table(result.summary), end="")
    return 0


def _add_evaluate_command(commands) -> None:
    evaluate = _command(commands, "evaluate", _evaluate,
                        "score a checkpoint on a frozen subset; write the predictions table")
    evaluate.add_argument("checkpoint", type=Path,
                          help="a checkpoint from `sonocad train`, or 'default' (the bundled "
                               "model)")
    evaluate.add_argument("--data", type=Path, required=True, action="append", metavar="DIR",
                          help="dataset folder or manifest; once per data source, each with "
                               "its --split in the same order")
    evaluate.add_argument("--split", required=True, action="append", metavar="FILE:SUBSET",
                          help="split JSON and subset, e.g. benchmarks/splits/busi.json:test")
    evaluate.add_argument("--by", action="append", default=[], metavar="FIELD",
                          help="also report each group of a field apart, with CIs, beside the "
                               "pooled figures: source, scanner, label or a clinical field "
                               "(BUS-BRA's birads, histology, side; a manifest's own columns); "
                               "repeatable (per source always with several --data)")
    evaluate.add_argument("--per", choices=["image", "patient"], default="image",
                          help="patient: also one benign-vs-malignant call per patient (AUROC, "
                               "sensitivity, specificity with CIs over patients; patients.csv), "
                               "where the images have patient ids (BUS-BRA, a manifest's "
                               "patient_id column); default image")
    evaluate.add_argument("--patient-score", choices=["max", "mean"],
                          help="with --per patient: a patient's P(malignant) is the max over "
                               "their lesion images (default: one malignant lesion makes the "
                               "patient malignant) or the mean")
    _add_output_folder(evaluate, "folder to write")
    evaluate.add_argument("--layout", help=LAYOUT_HELP)
    evaluate.add_argument("--overlays", type=int, default=6,
                          help="overlays of worst to best cases to draw (default 6)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="images per model call (8)")


def _evaluate(args: argparse.Namespace) -> int:
    from sonocad.evaluation.breakdown import format_breakdown
    from sonocad.evaluation.summary import format_summary
    from sonocad.workflows.evaluate import evaluate

    if args.patient_score and args.per != "patient":
        raise SonocadError("--patient-score needs --per patient")
    result = evaluate(args.checkpoint, args.data, args.split, args.out, layout=args.layout,
                      overlays=args.overlays, batch_size=args.batch_size, by=args.by,
                      per=args.per, patient_score=args.patient_score or "max",
                      overwrite=args.overwrite)
    print(format_summary(result.metrics))
    for table in result.metrics.get("breakdowns", {}).values():
        print(format_breakdown(table))
    print(f"wrote {result.out_dir}")
    return 0


def _add_compare_command(commands) -> None:
    compare = _command(commands, "compare", _compare,
                       "compare two models on the same images: paired statistics at "
                       "participant level (JMIR 2026 and QIMS 2023 Table 2 layouts) and "
                       "paired differences B - A with 95 % CIs")
    for name in ("eval_a", "eval_b"):
        compare.add_argument(name, type=Path, metavar=name.upper(),
                             help="a `sonocad evaluate` or `sonocad predict` folder, or its "
                                  "predictions.csv; rows are joined on image_id, else file "
                                  "path, path suffix or file content (docs/evaluation.md)")
    compare.add_argument("--out", type=Path, metavar="FILE.json",
                         help="also write every number as JSON")


def _compare(args: argparse.Namespace) -> int:
    from sonocad.evaluation.compare import compare_evaluations, format_comparison
    from sonocad.io.atomic import write_json

    if args.out:
        claim_output_file(args.out, inputs=[args.eval_a, args.eval_b])
    comparison = compare_evaluations(args.eval_a, args.eval_b)
    print(format_comparison(comparison))
    if args.out:
        write_json(args.out, comparison.to_dict())
        print(f"wrote {args.out}")
    return 0


def _add_report_command(commands) -> None:
    report = _command(commands, "report", _report,
                      "one self-contained, print-ready HTML report of models and their "
                      "evaluations: data, training curves, metrics with CIs, figures, heatmaps "
                      "and model cards")
    report.add_argument("runs", nargs="+", type=Path, metavar="FOLDER",
                        help="what to report, in any mix: run folders (`sonocad train --out`), "
                             "evaluate folders (`sonocad evaluate CKPT|default --out`) and "
                             "cross-validation folders (`sonocad train --folds all --out`)")
    report.add_argument("--out", type=Path, required=True, metavar="report.html",
                        help="HTML file to write")
    report.add_argument("--eval", type=Path, action="append", dest="evaluations",
                        metavar="DIR", help="with run folders only: the evaluation of each, "
                                            "once per FOLDER in order (default: RUN/eval)")
    report.add_argument("--data", type=Path, metavar="DIR",
                        help="the data set the evaluations read: enables heatmap examples")
    report.add_argument("--layout", help=f"--data's layout: {LAYOUT_HELP}")
    report.add_argument("--examples", type=int, default=3, metavar="N",
                        help="test images per run shown with a heatmap (default 3; 0: none)")
    report.add_argument("--compare", type=Path, metavar="FILE.json",
                        help="include the tables of a `sonocad compare --out` file")
    report.add_argument("--title", help="the report's title")


def _report(args: argparse.Namespace) -> int:
    from sonocad.report import build_report
    from sonocad.report.runner import TITLE

    out = build_report(args.runs, args.out, evaluations=args.evaluations, data=args.data,
                       layout=args.layout, examples=args.examples, compare=args.compare,
                       title=args.title or TITLE)
    print(f"wrote {out}")
    return 0


def _add_combine_command(commands) -> None:
    combine = _command(commands, "combine", _combine,
                       "QIMS 2023: clinical MLP and combined models (logistic regression, "
                       "decision tree) on a detector's scores; prints the Table 2 layout")
    combine.add_argument("--fit", type=Path, required=True, metavar="PREDICTIONS.csv",
                         help="detector predictions table to fit on (e.g. the train subset)")
    combine.add_argument("--test", type=Path, required=True, metavar="PREDICTIONS.csv",
                         help="detector predictions table to test on")
    combine.add_argument("--clinical", type=Path, required=True, metavar="CLINICAL.csv",
                         help="clinical table keyed by image_id (or a CSV manifest) with age, "
                              "family history, BRCA and density columns (docs/clinical.md)")
    _add_output_folder(combine, "folder to write")
    combine.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    combine.add_argument("--seed", type=int, default=0, help="random seed (0)")


def _combine(args: argparse.Namespace) -> int:
    from sonocad.evaluation.combined_runner import run_combined

    result = run_combined(args.fit, args.test, args.clinical, args.out, folds=args.folds,
                          seed=args.seed, overwrite=args.overwrite)
    print(result.table)
    print(f"wrote {result.out_dir}")
    return 0


# --- predict / export ----------------------------------------------------------------------

def _add_inference_commands(commands) -> None:
    predict = _command(commands, "predict", _predict,
                       "segment / classify images, folders, globs or DICOM cine loops")
    predict.add_argument("inputs", nargs="+", metavar="[CKPT] INPUT",
                         help="an optional checkpoint (.pt or .onnx; default: the bundled "
                              "model), then image files, folders or globs")
    # argparse would repeat the metavar ("[[CKPT] INPUT ...]"), as if checkpoints repeated.
    predict.usage = "%(prog)s [options] --out DIR [CKPT] INPUT [INPUT ...]"
    _add_output_folder(predict, "folder to write")
    predict.add_argument("--resume", action="store_true",
                         help="continue an earlier predict into --out (after a crash, say): "
                              "only inputs missing from its predictions.csv are predicted")
    predict.add_argument("--backend", choices=["torch", "onnx"],
                         help="inference engine (default: onnx for a .onnx model and for the "
                              "bundled model where ONNX Runtime is installed, else torch)")
    predict.add_argument("--batch-size", type=int, default=8,
                         help="images per model call (8; fewer for very large images)")
    predict.add_argument("--outputs", default="mask,overlay,heatmap,table",
                         help="what to write, comma-separated, from mask, overlay, heatmap, "
                              "table (default: all)")
    predict.add_argument("--pictures", choices=["png", "jpeg"], default="png",
                         help="overlay and heatmap format: png (lossless, default) or jpeg "
                              "(about 15 x faster to write, lossy); masks are always PNG")
    predict.add_argument("--dicom-out", action="store_true",
                         help="for each DICOM input, also a DICOM Segmentation of the lesion and "
                              "a Structured Report of the findings in DIR/dicom, in the "
                              "source's study (docs/dicom.md)")
    predict.add_argument("--spacing", metavar="MM[,MM]",
                         help="pixel spacing in mm (one value, or ROW,COLUMN) for images whose "
                              "file and manifest row give none, e.g. PNG or JPEG: lesion sizes "
                              "in mm")

    outline = _command(commands, "outline", _outline,
                       "outline lesions from boxes drawn around them (LiteMedSAM; the "
                       "interactive extra): mask, overlay with diameters, a predictions row, "
                       "SEG + SR for DICOM")
    outline.add_argument("image", type=Path, help="an image file (PNG, JPEG, ..., or DICOM)")
    outline.add_argument("--box", action="append", required=True, metavar="X0,Y0,X1,Y1",
                         help="a box around one lesion, in pixels (x right, y down); repeat "
                              "for several lesions")
    _add_output_folder(outline, "folder to write")
    outline.add_argument("--model", type=Path, metavar="CKPT",
                         help="the model whose class call the row carries (default: the "
                              "bundled model)")
    outline.add_argument("--frame", type=int, metavar="N",
                         help="the frame of a cine loop or multi-page TIFF (default: the first)")
    outline.add_argument("--spacing", metavar="MM[,MM]",
                         help="pixel spacing in mm (one value, or ROW,COLUMN) for an image whose "
                              "file gives none: lesion sizes in mm")
    outline.add_argument("--dicom-out", action="store_true",
                         help="for a single-frame DICOM image, also a DICOM Segmentation and a "
                              "Structured Report in DIR/dicom (docs/dicom.md)")

    explain = _command(commands, "explain", _explain,
                       "heatmaps of where a model looked: Grad-CAM for classifiers, the lesion "
                       "probability for segmentation models, both for multitask models (the "
                       "default model: lesion probability and Grad-CAM of its class call)")
    explain.add_argument("inputs", nargs="+", metavar="IMAGE",
                         help="image files, after an optional checkpoint (.pt; default: the "
                              "bundled model)")
    _add_output_folder(explain, "folder to write")
    explain.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam",
                         help="class activation method for classifiers (gradcam)")

    export = _command(commands, "export", _export, "export a checkpoint for ONNX Runtime")
    export.add_argument("checkpoint", type=Path, help="a checkpoint from `sonocad train`, or "
                        "`default` (the bundled model; then --out is needed)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (the only one)")
    export.add_argument("--out", type=Path, help="file to write (default: beside the checkpoint)")
    export.add_argument("--half", action="store_true",
                        help="store the weights in half precision (half the file; the same "
                             "values where the checkpoint was saved in half precision)")


def _predict(args: argparse.Namespace) -> int:
    from sonocad.workflows.predict import predict

    checkpoint, inputs = _split_checkpoint(args.inputs)
    if args.overwrite and args.resume:
        raise SonocadError("--overwrite and --resume contradict each other: give one")
    from sonocad.workflows.writer import parse_outputs

    result = predict(inputs, args.out, checkpoint=checkpoint, backend=args.backend,
                     batch_size=args.batch_size, overwrite=args.overwrite, resume=args.resume,
                     outputs=parse_outputs(args.outputs), picture_format=args.pictures,
                     spacing_mm=_spacing(args.spacing), dicom_out=args.dicom_out)
    print(f"predicted {len(result.rows)} images into {result.out_dir}")
    return _batch_status(result.failures)


def _outline(args: argparse.Namespace) -> int:
    from sonocad.workflows.outline import outline, parse_box

    try:
        boxes = [parse_box(text) for text in args.box]
    except ValueError as exc:
        raise SonocadError(f"--{exc}") from None
    result = outline(args.image, boxes, args.out, checkpoint=args.model,
                     spacing_mm=_spacing(args.spacing), frame=args.frame,
                     dicom_out=args.dicom_out, overwrite=args.overwrite)
    row = result.row
    size = (f"{row['lesion_diameter_mm']:.1f} mm" if row["spacing_mm"] is not None
            else f"{row['lesion_diameter_px']:.0f} px")
    print(f"outlined {row['lesion_count']} lesion(s) in {args.image} (main: longest diameter "
          f"{size}) into {result.out_dir}")
    return 0


def _batch_status(failures: Sequence[object]) -> int:
    if failures:
        print(f"sonocad: {len(failures)} input(s) failed (listed above)", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _spacing(text: str | None) -> tuple[float, float] | None:
    """--spacing 0.1 or 0.1,0.2 -> (row, column) mm; anything else is a usage error."""
    from sonocad.io.spacing import parse_spacing

    if text is None:
        return None
    try:
        return parse_spacing(text)
    except ValueError:
        raise SonocadError(f"--spacing {text!r}: give one or two positive numbers of mm per "
                           "pixel (ROW,COLUMN)") from None


def _split_checkpoint(items: list[str], verb: str = "predict") -> tuple[Path | None, list[str]]:
    """`predict [CKPT] INPUTS...`: the first item is a checkpoint when it is a .pt/.onnx file."""
    first = Path(items[0])
    if first.suffix in (".pt", ".onnx") and len(items) > 1:
        return first, items[1:]
    if first.suffix in (".pt", ".onnx"):
        raise SonocadError(f"{first}: a checkpoint was given but no images to {verb}")
    return None, items


def _explain(args: argparse.Namespace) -> int:
    from sonocad.explain import explain

    checkpoint, inputs = _split_checkpoint(args.inputs, "explain")
    result = explain(checkpoint, inputs, args.out, method=args.method, overwrite=args.overwrite)
    print(f"wrote {result.pictures} pictures of {len(result.rows)} images to {result.out_dir}")
    return _batch_status(result.failures)


def _export(args: argparse.Namespace) -> int:
    from sonocad.extras import require
    require("onnx")
    from sonocad.inference.export import export_onnx
    from sonocad.progress import waiting

    with waiting(f"exporting {args.checkpoint} to ONNX (tracing and checking the model)"):
        written = export_onnx(args.checkpoint, args.out, half_weights=args.half)
    print(f"wrote {written}")
    return 0


# --- serve ---------------------------------------------------------------------------------

def _add_serve_command(commands) -> None:
    serve = _command(commands, "serve", _serve, "local web viewer: upload an image, see the "
                     "lesion outline, heatmap, probabilities and measurements")
    serve.add_argument("--model", type=Path, metavar="CKPT",
                       help="checkpoint or .onnx (default: the bundled model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    # From the environment by default: command lines are visible to other users in `ps`.
    serve.add_argument("--token", default=os.environ.get("SONOCAD_TOKEN"),
                       help="require 'Authorization: Bearer TOKEN' (default: $SONOCAD_TOKEN)")
    serve.add_argument("--backend", choices=["torch", "onnx"],
                       help="default: onnx for a .onnx model and for the bundled model where "
                            "ONNX Runtime is installed, else torch")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests addressed to NAME (a name or address this "
                            "machine is reached by, e.g. on the LAN or behind a proxy; "
                            "repeatable; loopback names and --host are always answered)")
    serve.add_argument("--annotate", type=Path, metavar="DATASET_DIR",
                       help="annotation mode: step through the images of --images, accept or "
                            "correct each outline, set its class, and save into DATASET_DIR "
                            "(images/, masks/, manifest.csv, as `data check` reads; the "
                            "originals are never changed); the same DATASET_DIR again resumes "
                            "(docs/annotation.md)")
    serve.add_argument("--images", type=Path, metavar="DIR",
                       help="with --annotate: the folder of images to annotate (searched as "
                            "predict searches a folder)")


def _serve(args: argparse.Namespace) -> int:
    if (args.annotate is None) != (args.images is None):
        raise SonocadError("--annotate DATASET_DIR and --images DIR go together: the data set "
                           "to save into and the images to annotate")
    from sonocad.serve import run

    run(args.model, host=args.host, port=args.port, token=args.token, backend=args.backend,
        allowed_hosts=args.allow_host,
        annotate=None if args.annotate is None else (args.annotate, args.images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
