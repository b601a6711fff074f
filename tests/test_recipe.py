from pathlib import Path

import pytest

from sonocad.engine.recipe import load_recipe
from sonocad.errors import InputError, SonocadError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


MINIMAL = "task: segmentation\nmodel: {name: unet}\n"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_loads(recipe):
    loaded = load_recipe(recipe)
    assert loaded.model.name
    assert recipe.read_text().startswith("#"), "each recipe starts with a comment citing its paper"


def test_defaults_are_filled(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.train.batch_size == 8
    assert recipe.optimizer.name == "adamw"


def test_overrides_bare_and_dotted_keys_parse_yaml_values(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL),
                         ["max_steps=2", "optimizer.lr=3e-4", "transform.input_size=[128, 96]",
                          "model.args.base_width=8"])
    assert recipe.train.max_steps == 2
    assert recipe.optimizer.lr == pytest.approx(3e-4)
    assert recipe.transform.input_size == (128, 96)  # the typed section (TransformConfig)
    assert recipe.model.args == {"base_width": 8}


def test_a_dotted_override_may_start_inside_a_section_but_never_makes_one(tmp_path):
    path = write(tmp_path, MINIMAL + "transform: {augment: {hflip: {p: 0.5}, speckle: {}}}\n")
    recipe = load_recipe(path, ["augment.hflip=null", "augment.vflip={p: 0.2}"])
    assert sorted(recipe.transform.augment) == ["speckle", "vflip"]  # hflip: null leaves it out
    assert recipe.transform.augment["vflip"]["p"] == 0.2
    assert "augment" not in recipe.to_dict()  # was silently added as a section, and ignored
    with pytest.raises(SonocadError, match="not in the recipe"):
        load_recipe(path, ["augmnt.hflip=null"])


def test_ambiguous_and_unknown_override_keys_are_errors(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(SonocadError, match="ambiguous"):
        load_recipe(path, ["name=x"])  # model.name, loss.name, optimizer.name, ...
    with pytest.raises(SonocadError, match="not in the recipe"):
        load_recipe(path, ["max_stepz=2"])
    with pytest.raises(SonocadError, match="key=value"):
        load_recipe(path, ["max_steps"])


def test_typos_in_a_recipe_are_errors(tmp_path):
    with pytest.raises(InputError, match="unknown key"):
        load_recipe(write(tmp_path, MINIMAL + "train: {batch_sise: 4}\n"))
    with pytest.raises(InputError, match="unknown recipe section"):
        load_recipe(write(tmp_path, MINIMAL + "trian: {}\n"))
    with pytest.raises(InputError, match="task"):
        load_recipe(write(tmp_path, "task: painting\nmodel: {name: unet}\n"))
    with pytest.raises(InputError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="YAML"):
        load_recipe(write(tmp_path, "task: [unclosed\n"))


QIMS_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "qims2023_maskrcnn.yaml"


def test_a_detectors_own_sizes_follow_input_size_and_a_mismatch_is_an_error():
    """The QIMS recipe at 512 px ran at 1024 (min_size / max_size kept), 6 s an image."""
    recipe = load_recipe(QIMS_RECIPE, ["transform.input_size=512"])
    assert recipe.model.args == {"min_size": 512, "max_size": 512}
    assert load_recipe(QIMS_RECIPE).model.args == {
        "min_size": 1024, "max_size": 1024}
    with pytest.raises(InputError, match="model.args.max_size 1024 disagrees with "
                                         "transform.input_size 512"):
        load_recipe(QIMS_RECIPE,
                    ["transform.input_size=512", "model.args.max_size=1024"])


@pytest.mark.parametrize("section, message", [
    ("train: {batch_size: eight}",
     "train.batch_size: input should be a valid integer, not 'eight'"),
    ("train: {batch_size: 0}", "train.batch_size: input should be greater than 0, not 0"),
    ("train: {amp: 'yes'}", "train.amp: input should be a valid boolean, not 'yes'"),
    ("optimizer: {lr: fast}", "optimizer.lr: input should be a valid number, not 'fast'"),
    ("optimizer: {name: adamax}", "optimizer.name: input should be 'sgd', 'adam' or 'adamw'"),
    ("data: {classes: benign}", "data.classes: input should be a valid list, not 'benign'"),
    ("scheduler: {nme: cosine}", "unknown key scheduler.nme"),
])
def test_a_wrong_type_or_key_is_one_line_naming_the_key(tmp_path, section, message):
    with pytest.raises(InputError) as caught:
        load_recipe(write(tmp_path, MINIMAL + section + "\n"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_model_section_typo_is_caught(tmp_path):
    with pytest.raises(InputError, match="unknown key model.nme"):
        load_recipe(write(tmp_path, "task: segmentation\nmodel: {name: unet, nme: x}\n"))
    with pytest.raises(InputError, match="unknown model 'unte'"):
        load_recipe(write(tmp_path, "task: segmentation\nmodel: {name: unte}\n"))


def test_a_bad_transform_is_one_line_before_any_task_reads_it(tmp_path):
    """The detector's size check reads transform.input_size: a bad one is refused first."""
    text = "task: detection\nmodel: {name: maskrcnn_resnet101_fpn}\n"
    with pytest.raises(InputError, match="input_size must be a positive int or "
                                         r"\[height, width\], got 'big'"):
        load_recipe(write(tmp_path, text + "transform: {input_size: big}\n"))
    with pytest.raises(InputError, match="unknown transform key"):
        load_recipe(write(tmp_path, MINIMAL + "transform: {nope: 1}\n"))
