"""docs/reference.md is what `python -m sonocad.reference` prints, and it documents everything."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import pytest

from sonocad import reference
from sonocad.engine import recipe

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
COMMANDS = ("data check", "data split", "data phantom", "register", "train", "evaluate",
            "compare", "report", "combine", "predict", "explain", "export", "serve")


@pytest.fixture(scope="module")
def generated() -> str:
    return reference.render()


def test_committed_reference_is_up_to_date(generated: str) -> None:
    committed = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    if committed != generated:
        diff = difflib.unified_diff(committed.splitlines(), generated.splitlines(),
                                    "docs/reference.md", "generated", lineterm="", n=1)
        pytest.fail(f"docs/reference.md is out of date: run `{reference.REGENERATE}` "
                    "and commit the result\n" + "\n".join(list(diff)[:40]))


def test_every_recipe_key_has_a_description() -> None:
    keys = reference.recipe_keys()
    for section, defaults in recipe.DEFAULTS.items():
        assert {section, *(f"{section}.{key}" for key in defaults)} <= set(keys)
    assert set(recipe.SECTIONS) <= set(keys)
    assert [key for key in keys if not recipe.KEY_DESCRIPTIONS.get(key)] == []
    assert [key for key in recipe.KEY_DESCRIPTIONS if key not in keys] == []


def test_an_undescribed_key_stops_the_generator(monkeypatch, capsys) -> None:
    monkeypatch.setitem(recipe.DEFAULTS["train"], "new_knob", 1)
    with pytest.raises(reference.ReferenceError, match="train.new_knob has no description"):
        reference.render()
    assert reference.main([]) == 2
    assert "train.new_knob has no description" in capsys.readouterr().err


def test_hand_written_text_matches_the_code() -> None:
    assert reference.problems() == []


def test_every_command_and_option_appears(generated: str) -> None:
    sections = {section.split("\n", 1)[0]: section for section in generated.split("\n### ")}
    for name in COMMANDS:
        assert f"sonocad {name}" in sections, name
    for words, parser, _ in reference.walk_commands(reference.build_parser()):
        section = sections[" ".join(words)]
        for action in parser._actions:
            if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}" in section, (words, option)


def test_recipe_keys_people_look_for_are_documented(generated: str) -> None:
    for key in ("train.max_steps", "data.limit", "data.train_subsets", "data.val_subset",
                "data.sources", "data.class_weights", "transform.input_size"):
        assert f"| `{key}` |" in generated, key


def test_output_is_the_same_whatever_the_environment(generated: str, monkeypatch) -> None:
    monkeypatch.setenv("SONOCAD_TOKEN", "do-not-publish-me")
    monkeypatch.setenv("COLUMNS", "37")
    text = reference.render()
    assert text == generated
    assert "do-not-publish-me" not in text


def test_main_writes_the_file(generated: str, tmp_path: Path) -> None:
    out = tmp_path / "reference.md"
    assert reference.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == generated
