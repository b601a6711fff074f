"""The command and recipe reference, docs/reference.md, generated so that it cannot drift.

    python -m sonocad.reference --out docs/reference.md

Commands, arguments, defaults and help come from `sonocad.cli.build_parser()`; recipe keys and
defaults from `sonocad.engine.recipe.DEFAULTS` and `sonocad.transforms.TransformConfig`, with
the one-line descriptions of `sonocad.engine.recipe.KEY_DESCRIPTIONS`. The sections on inputs,
layouts and limits quote the docstrings and constants of the modules that implement them; what
is written here by hand is checked against the code by `problems()`, and `render()` refuses to
write a reference while any remain. tests/test_reference.py fails when the committed file is
not what this prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from sonocad import cli, transforms
from sonocad.data import adapters, sources
from sonocad.data.sample import CLASS_NAMES
from sonocad.engine import recipe
from sonocad.errors import SonocadError
from sonocad.io.annotations import MaskFormat
from sonocad.io.images import IMAGE_SUFFIXES
from sonocad.io.pixels import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from sonocad.models import list_models
from sonocad.tasks import get_task, task_names
from sonocad.tasks.losses import SEGMENTATION_LOSSES

REGENERATE = "python -m sonocad.reference --out docs/reference.md"

Section = Callable[[], list[str]]


class ReferenceError(Exception):
    """The code says something the reference cannot document (a key without a description)."""


# --- commands -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser, built without sonocad's environment variables: a default read from one
    (`serve --token` from $SONOCAD_TOKEN) must reach neither a secret nor this machine's set-up
    into the reference."""
    ours = [name for name in os.environ if name.startswith("SONOCAD_")]
    with mock.patch.dict(os.environ):
        for name in ours:
            del os.environ[name]
        return cli.build_parser()


def walk_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("sonocad",),
                  summary: str | None = None
                  ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(command words, parser, one-line help) for the parser and every sub-command, in the
    order the CLI adds them."""
    yield words, parser, summary
    for name, sub, help_text in _subcommands(parser):
        yield from walk_commands(sub, (*words, name), help_text)


def _subcommands(parser: argparse.ArgumentParser
                 ) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            found += [(name, sub, helps.get(name)) for name, sub in action.choices.items()]
    return found


def _commands_section() -> list[str]:
    commands = list(walk_commands(build_parser()))
    lines = ["## Commands", "",
             ("Every command takes `-h` / `--help`, which prints the same help as below. "
              "`KEY=VALUE` recipe overrides may stand anywhere after `train RECIPE`."), "",
             "| command | what it does |", "| --- | --- |"]
    lines += [f"| [{' '.join(words[1:])}](#{'-'.join(words)}) | {_cell(summary or '')} |"
              for words, _, summary in commands[1:]]
    lines.append("")
    for words, parser, _ in commands:
        lines += _command_lines(words, parser)
    return lines


def _command_lines(words: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"### {' '.join(words)}", ""]
    if parser.description:
        lines += [_cell(parser.description), ""]
    subcommands = _subcommands(parser)
    if subcommands:
        names = ", ".join(f"[{name}](#{'-'.join((*words, name))})" for name, _, _ in subcommands)
        lines += [f"Sub-commands: {names}.", ""]
    lines += ["```", _synopsis(words, parser), "```", ""]
    rows = [_argument_row(action, " ".join(words)) for action in _documented(parser)]
    if rows:
        lines += ["| argument | default | help |", "| --- | --- | --- |", *rows, ""]
    return lines


def _documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions
            if action.help is not argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)]


def _synopsis(words: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    """The command, its required options and positionals in order, then `[options]`."""
    actions = _documented(parser)
    required = [" ".join(filter(None, (a.option_strings[-1], _arguments(a))))
                for a in actions if a.option_strings and a.required]
    positional = [_arguments(a) for a in actions if not a.option_strings]
    optional = any(a.option_strings and not a.required for a in actions)
    tail = ["COMMAND ..."] if _subcommands(parser) else []
    return " ".join([*words, *positional, *required, *(["[options]"] if optional else []), *tail])


def _argument_row(action: argparse.Action, prog: str) -> str:
    return (f"| {_invocation(action)} | {_default(action)} | "
            f"{_cell(_help(action, prog))} |")


def _invocation(action: argparse.Action) -> str:
    """`--out DIR`, `--version`, `dataset`: each spelling of the argument, as argparse's."""
    arguments = _arguments(action)
    spellings = [" ".join(filter(None, (option, arguments))) for option in action.option_strings]
    return ", ".join(f"`{spelling}`" for spelling in spellings or [arguments])


def _arguments(action: argparse.Action) -> str:
    """The argument's values as argparse's usage writes them (METAVAR, [METAVAR ...], ...)."""
    metavar = _metavar(action)
    nargs = action.nargs
    if nargs == 0:
        return ""
    if nargs is None:
        return metavar
    if nargs == argparse.OPTIONAL:
        return f"[{metavar}]"
    if nargs == argparse.ZERO_OR_MORE:
        return f"[{metavar} ...]"
    if nargs == argparse.ONE_OR_MORE:
        return f"{metavar} [{metavar} ...]"
    if isinstance(nargs, int):
        return " ".join([metavar] * nargs)
    raise ReferenceError(f"{action.dest}: nargs={nargs!r} has no spelling in the reference")


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _default(action: argparse.Action) -> str:
    # argparse marks a `*` positional required, yet it takes none too.
    required = action.required if action.option_strings else action.nargs not in (
        argparse.OPTIONAL, argparse.ZERO_OR_MORE)
    if required:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.default == []:
        return ""
    return f"`{action.default}`"


def _help(action: argparse.Action, prog: str) -> str:
    """The help string as `--help` shows it (%(default)s and the like filled in)."""
    if not action.help:
        return ""
    return argparse.HelpFormatter(prog)._expand_help(action)


# --- recipes ------------------------------------------------------------------------------

def recipe_schema() -> dict[str, dict[str, Any]]:
    """Section -> {key: default} for every key a recipe may set that sonocad checks itself:
    recipe.DEFAULTS, plus the transform keys of TransformConfig (recipe.py leaves that section
    to sonocad.transforms). Sections without defaults (task, description) map to {}."""
    schema = {section: dict(recipe.DEFAULTS.get(section, {}))
              for section in _section_order(recipe.SECTIONS)}
    schema["transform"] = {field.name: _field_default(field)
                           for field in dataclasses.fields(transforms.TransformConfig)}
    return schema


def _section_order(sections: set[str]) -> list[str]:
    # The order recipes are written in (recipes/default.yaml): what, then how.
    described = [key for key in recipe.KEY_DESCRIPTIONS if key in sections]
    return described + sorted(sections - set(described))


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def recipe_keys() -> list[str]:
    """Every section and dotted key of the schema, in order."""
    keys = []
    for section, defaults in recipe_schema().items():
        keys += [section, *(f"{section}.{key}" for key in defaults)]
    return keys


def _recipe_section() -> list[str]:
    lines = ["## Recipes", "", _docstring(recipe), "",
             ("Keys, their defaults (what a recipe that leaves a key out gets) and what they "
              "do. `model.args`, `loss.args` and `scheduler.args` are free-form: the model, "
              "loss or schedule checks them."), ""]
    for section, defaults in recipe_schema().items():
        lines += _recipe_table(section, defaults)
    return lines + _smoke_and_folds_lines()


def _recipe_table(section: str, defaults: Mapping[str, Any]) -> list[str]:
    lines = [f"### {section}", "", _describe(section), ""]
    if defaults:
        lines += ["| key | default | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{section}.{key}` | `{_yaml(value)}` | {_describe(f'{section}.{key}')} |"
                  for key, value in defaults.items()]
        lines.append("")
    extra = _SECTION_EXTRAS.get(section)
    return lines + (extra() if extra else [])


def _describe(key: str) -> str:
    choices = _CHOICES.get(key)
    text = recipe.KEY_DESCRIPTIONS[key] + (f"; {choices()}" if choices else "")
    return _cell(text[0].upper() + text[1:] + ".")


def _yaml(value: Any) -> str:
    """A default as a recipe writes it (null, true, [0.9, 0.999])."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf)
    return text.removesuffix("\n...\n").strip()


def _code_list(values: Iterable[object]) -> str:
    return ", ".join(f"`{value}`" for value in values)


# Choices a module lists, appended to a key's description from that module.
_CHOICES: dict[str, Callable[[], str]] = {
    "task": lambda: "one of " + _code_list(task_names()),
    "model.name": lambda: "; ".join(f"{task}: {_code_list(list_models(task, built_in=True))}"
                                    for task in task_names()),
    "loss.name": lambda: "segmentation losses: " + _code_list(SEGMENTATION_LOSSES),
    "transform.normalize": lambda: "one of " + _code_list(transforms.NORMALIZATIONS),
    "transform.despeckle": lambda: "one of " + _code_list(transforms.DESPECKLE_FILTERS),
    "train.select_metric": lambda: "defaults: " + ", ".join(
        f"{task} `{get_task(task).select_metric}`" for task in task_names()),
}


def _transform_lines() -> list[str]:
    lines = [_docstring(transforms), "", "#### transform.augment", "",
             ("Applied in this order whatever the recipe's order (geometric, then pixel "
              f"changes), each with probability `p` (default {transforms.DEFAULT_P})."), "",
             "| augmentation | default parameters |", "| --- | --- |"]
    lines += [f"| `{name}` | `{_yaml(augmentation.defaults)}` |"
              for name, augmentation in transforms.AUGMENTATIONS.items()]
    return [*lines, ""]


def _sources_lines() -> list[str]:
    return ["#### data.sources", "", _docstring(sources), ""]


# What a section's table needs beside it, from the module that reads the section.
_SECTION_EXTRAS: dict[str, Section] = {"data": _sources_lines, "transform": _transform_lines}


# Examples in the text below; problems() applies them to the defaults, so they stay valid.
SMOKE_OVERRIDES = ("max_steps=2", "limit=8")
FOLD_OVERRIDES = ("train_subsets=[fold0,fold1,fold2,fold3]", "val_subset=fold4")


def _smoke_and_folds_lines() -> list[str]:
    smoke, folds = (" ".join(map(shlex.quote, o)) for o in (SMOKE_OVERRIDES, FOLD_OVERRIDES))
    return [
        "### Smoke runs and K-fold cross-validation", "",
        ("A smoke run proves a recipe end to end in seconds: `train.max_steps` stops after a "
         "few optimiser steps and `data.limit` keeps a few images of each subset (evenly "
         "spaced, so classes stay mixed):"), "",
        "```",
        f"sonocad train recipes/unet.yaml --data DIR --split split.json --out runs/smoke {smoke}",
        "```", "",
        ("K-fold: `sonocad data split --folds K` writes subsets `fold0` ... `fold{K-1}` (and "
         "`test` with `--test-fraction`); each run trains on K-1 folds (`data.train_subsets`) "
         "and validates on the one left (`data.val_subset`):"), "",
        "```",
        "sonocad data split DIR --folds 5 --out folds.json",
        f"sonocad train RECIPE --data DIR --split folds.json --out runs/fold4 {folds}",
        "```", "",
    ]


# --- inputs, layouts, labels (written by hand, checked by problems()) ---------------------

INPUT_FORMATS = """\
| format | files | pixels | frames | pixel spacing |
| --- | --- | --- | --- | --- |
| PNG | `.png` | 8-bit grey or RGB (palette, alpha: grey or RGB); 16-bit grey widened to the \
full 16-bit range from the fewest of 8/10/12/14/16 bits that hold its largest value; 16-bit \
RGB is read as 8-bit RGB | one (an animated PNG gives its first picture) | none |
| JPEG | `.jpg`, `.jpeg` | 8-bit grey or RGB (CMYK, YCbCr: RGB) | one | none |
| BMP | `.bmp` | 8-bit grey, palette or RGB | one | none |
| TIFF | `.tif`, `.tiff` | 8- or 16-bit, any common mode (16-bit widened as PNG; 32-bit \
integer and float kept when whole numbers within 0..65535, else stretched) | every page is a \
frame | none |
| DICOM | `.dcm`, or no suffix with the `DICM` preamble | MONOCHROME1/2 through the modality \
and VOI LUT or window; RGB, YBR and PALETTE COLOR to RGB; 8-bit up to BitsStored 8, else \
16-bit widened from BitsStored | single-frame, or every frame of a multi-frame (cine) file, \
decoded one at a time | PixelSpacing, else ImagerPixelSpacing, else the ultrasound regions \
(SequenceOfUltrasoundRegions, cm converted to mm, when every calibrated region agrees) |
"""

INPUT_NOTES = """\
EXIF orientation is applied, so pixels are upright as a viewer shows them. A spacing is \
(row, column) mm per pixel. PNG, JPEG, BMP and TIFF files carry none that sonocad reads \
(their dpi is a screen's, not the probe's): their sizes in mm need the spacing from outside \
the file, a CSV manifest's `pixel_spacing_mm` column (or a command's spacing option, where \
the command has one above); without one, areas and diameters are in pixels only. Of a \
DICOM file only the pixel description (group 0028) and the geometry elements are read, so \
patient attributes never reach an output or a log."""

MANIFEST_COLUMNS = """\
| column | meaning |
| --- | --- |
| `image` | the image file, relative to the CSV (the only column required) |
| `mask` | its mask file(s), relative to the CSV, several separated by `;` (binary image, \
Labelme `.json` or QuPath `.geojson`, told by suffix) |
| `label` | `normal`, `benign` or `malignant` (any case) |
| `patient_id` | the unit a split keeps in one subset (else the image) |
| `pixel_spacing_mm` | one number, or row and column separated by `x`, `,`, `;` or a space |
| `source` | the data set's name (per-source figures in `evaluate` and training logs) |
| `scanner` | the ultrasound system (text from `@`, a probe frequency, is dropped) |
| any other | clinical fields, kept per image (e.g. for `sonocad combine`) |
"""

LABEL_CONVENTIONS = """\
- Classes are `normal`, `benign` and `malignant`, matched in any case; models see them in that \
order, and a data set may hold a subset. `normal` images have no lesion: no mask, or an empty \
one.
- Masks: `binary`: any non-zero pixel is lesion, and several files of one image (BUSI's \
`_mask_1`, a manifest's `a.png;b.png`) are merged; `voc`: a class-index PNG, 0 background and \
255 the void border; `labelme`: Labelme JSON polygons, rectangles and points; `geojson`: QuPath \
polygons in image pixel coordinates.
- Where the label comes from: the class folder (`busi`; `folder` when `images/` has class \
sub-folders), the `Pathology` column (`busbra`), the shapes' label with malignant winning over \
benign (`labelme`), the mask's class names in `class_names.txt` (`voc`), the `label` column \
(`manifest`).
- Splits (`sonocad data split`) keep every patient and every group of duplicate images in one \
subset: `train`, `val`, `test`, or `fold0` ... `fold{K-1}` (plus `test`), and `held_out` with \
`--hold-out-scanner`."""

EXIT_MEANINGS = {
    "EXIT_OK": "all good",
    "EXIT_SOME_FAILED": "some inputs failed; the batch carried on and each failure was one "
                        "line naming the file (and the line, for a CSV)",
    "EXIT_FATAL": "a usage or fatal error (bad options, an unusable checkpoint, split or "
                  "output folder), one line; an unexpected failure is one `internal error` "
                  "line (`SONOCAD_DEBUG=1` shows the traceback)",
}


def _inputs_section() -> list[str]:
    return ["## Inputs", "", "### Image formats", "", INPUT_FORMATS, INPUT_NOTES, "",
            "### Dataset layouts", "", _docstring(adapters), "",
            "### Manifest columns", "", MANIFEST_COLUMNS,
            "### Labels, masks and splits", "", LABEL_CONVENTIONS, ""]


def _limits_section() -> list[str]:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    size = (f"{side} x {side} = " if side * side == MAX_IMAGE_PIXELS else "") + \
        f"{MAX_IMAGE_PIXELS:,}"
    owners = ", ".join(f"`{' '.join(words[1:])}`" for words in _output_rule_commands())
    exits = [f"- {getattr(cli, name)}: {meaning}." for name, meaning in EXIT_MEANINGS.items()]
    return ["## Outputs, exit codes and limits", "",
            f"- **Output folders.** `--out` of {owners}: {cli.OUTPUT_RULE}.",
            "- **Exit codes.**", *(f"  {line}" for line in exits),
            (f"- **Size limit.** An image or frame has at most {size} pixels and at least "
             f"{MIN_IMAGE_SIDE} pixels a side, checked from the file header before any pixel "
             "is decoded."), ""]


def _output_rule_commands() -> list[tuple[str, ...]]:
    """The commands whose --out follows OUTPUT_RULE (their help says so)."""
    return [words for words, parser, _ in walk_commands(build_parser())
            if any("--out" in a.option_strings and cli.OUTPUT_RULE in (a.help or "")
                   for a in parser._actions)]


# --- the document -------------------------------------------------------------------------

PARTS: tuple[Section, ...] = (_commands_section, _recipe_section, _inputs_section,
                              _limits_section)


def problems() -> list[str]:
    """Where the code and this reference disagree: each a line; empty when none."""
    return [*_description_problems(), *_hand_written_problems(), *_example_problems()]


def _description_problems() -> list[str]:
    keys, described = recipe_keys(), recipe.KEY_DESCRIPTIONS
    missing = [f"recipe key {key} has no description in "
               "sonocad.engine.recipe.KEY_DESCRIPTIONS" for key in keys
               if not described.get(key, "").strip()]
    stale = [f"KEY_DESCRIPTIONS describes {key}, which is not a recipe key"
             for key in described if key not in keys]
    return missing + stale


def _hand_written_problems() -> list[str]:
    wanted = {
        "INPUT_FORMATS": (INPUT_FORMATS, [f"`{suffix}`" for suffix in sorted(IMAGE_SUFFIXES)]),
        "MANIFEST_COLUMNS": (MANIFEST_COLUMNS, [
            f"| `{column}` |" for column in sorted(adapters._MANIFEST_FIELDS)]),
        "LABEL_CONVENTIONS": (LABEL_CONVENTIONS, [f"`{name}`" for name in (
            *CLASS_NAMES, *(mask_format.value for mask_format in MaskFormat),
            *adapters.ADAPTERS)]),
    }
    found = [f"{where} does not mention {word}" for where, (text, words) in wanted.items()
             for word in words if word not in text]
    exits = {name for name in vars(cli) if name.startswith("EXIT_")}
    return found + [f"EXIT_MEANINGS lacks sonocad.cli.{name}"
                    for name in sorted(exits - set(EXIT_MEANINGS))]


def _example_problems() -> list[str]:
    """The example overrides, applied to a minimal recipe and validated as `train` would."""
    found = []
    for override in (*SMOKE_OVERRIDES, *FOLD_OVERRIDES):
        example = recipe.merge(recipe.DEFAULTS, {"task": task_names()[0],
                                                 "model": {"name": "unet"}})
        try:
            recipe.apply_override(example, override)
            recipe.parse_recipe(example, Path(override))
        except SonocadError as exc:
            found.append(f"example override {override}: {exc}")
    return found


def render() -> str:
    """docs/reference.md: the same text for the same code, on any machine."""
    found = problems()
    if found:
        raise ReferenceError("the reference cannot be generated:\n  " + "\n  ".join(found))
    lines = ["# sonocad reference", "",
             ("Every command, option and recipe key, generated (do not edit by hand) from the "
              "argument parsers (`sonocad.cli`) and the recipe schema (`sonocad.engine.recipe`) "
              f"by `{REGENERATE}`; the tests fail when this file is out of date."), "",
             ("Contents: [Commands](#commands), [Recipes](#recipes), [Inputs](#inputs), "
              "[Outputs, exit codes and limits](#outputs-exit-codes-and-limits)."), ""]
    for part in PARTS:
        lines += part()
    return "\n".join(lines).rstrip("\n") + "\n"


# --- helpers ------------------------------------------------------------------------------

def _docstring(module: object) -> str:
    return inspect.getdoc(module) or ""


def _cell(text: str) -> str:
    """One line of Markdown that a table cell can hold."""
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonocad.reference",
                                     description="Print (or write) docs/reference.md.")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write here, not to stdout")
    args = parser.parse_args(argv)
    try:
        text = render()
    except ReferenceError as exc:
        print(f"sonocad.reference: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
