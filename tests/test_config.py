"""params.yaml is validated on load; errors name the key; both parameter sets stay valid and in sync."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from retina_sr.commands import compose_params
from retina_sr.config import ConfigError, deep_merge, flatten, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_are_the_demo_study():
    p = load_params(ROOT / "params.yaml")
    assert p.study == "demo" and p.data.source == "demo"
    assert p.train.perceptual.vgg_weights == "random"


def test_full_study_is_valid_and_paper_sized():
    p = load_params(ROOT / "params.yaml", ROOT / "conf/study/full.yaml")
    assert p.study == "full" and p.data.source == "kaggle" and p.data.n_images == 1000
    assert p.data.size == 1024 and (p.model.features, p.model.depth) == (64, 10)
    assert p.train.perceptual.vgg_weights == "imagenet"
    # the merge keeps keys the override does not name
    assert p.data.scales == [1, 2, 4, 8] and p.data.patches.crop == 128


def test_params_yaml_equals_hydra_demo_composition(raw):
    """DVC's `dvc exp run` rewrites params.yaml from conf/: the committed file must equal that."""
    assert compose_params("demo", ROOT / "conf") == raw


def test_unknown_key_is_named(raw):
    raw["data"]["patches"]["crops"] = 64
    with pytest.raises(ConfigError, match=r"data\.patches\.crops: unknown key"):
        params_from_dict(raw, "params.yaml")


def test_wrong_type_is_named(raw):
    raw["train"]["l1"]["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"train\.l1\.lr"):
        params_from_dict(raw, "params.yaml")


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("data", "patches", "crop"), 1024, r"patches\.crop \(1024\) is larger than size"),
        (("data", "scales"), [1, 3], r"zoom 3 is not 1 or a power of two"),
        (("data", "patches", "crop"), 100, r"divisible by the largest zoom"),
        (("data", "split", "val"), 0.9, r"leave images for training"),
        (("data", "source"), "folder", r"folder\.path is not set"),
        (("data", "patches", "blur_sigma"), [2.0, 1.0], r"low <= high"),
        (("train", "modified", "variants"), {"Bad Name": {}}, r"must match"),
        (("data", "n_images"), 2, r"data\.n_images"),
        (("train", "adversarial", "discriminator", "n_layers"), 6, r"smaller than the discriminator's smallest input"),
    ],
)
def test_impossible_values(raw, path, value, match):
    bad = copy.deepcopy(raw)
    d = bad
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    with pytest.raises(ConfigError, match=match):
        params_from_dict(bad, "params.yaml")


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_deep_merge_and_flatten():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}}) == {"a.b": 1, "a.c.d": [1, 2]}


def test_cli_validate(capsys):
    from retina_sr.cli import main

    assert main(["params", "validate", str(ROOT / "params.yaml"), str(ROOT / "conf/study/full.yaml")]) == 0
    assert "study=full" in capsys.readouterr().out


# ----------------------------------------------------- issue #8: late or silent failures end at load
def _cli_validate(path: Path, capsys) -> tuple[int, str]:
    from retina_sr.cli import main

    rc = main(["params", "validate", "--params", str(path)])
    return rc, capsys.readouterr().err


def _with(raw: dict, dotted: str, value) -> dict:
    bad = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    d = bad
    for k in parents:
        d = d[k]
    d[last] = value
    return bad


@pytest.mark.parametrize(
    "key,value,why",
    [
        ("data.patches.blur_sigma", [float("nan"), float("nan")], "finite"),
        ("data.patches.noise_std", [0.0, float("inf")], "finite"),
        ("data.patches.poisson_peak", float("inf"), "finite"),
        ("evaluate.vessel_threshold", float("nan"), "finite"),
        ("data.kaggle.min_free_gb", float("-inf"), "finite"),
        ("train.l1.steps", True, "true/false"),
        ("train.l1.lr", True, "true/false"),
        ("data.patches.jpeg_quality", [True, 90], "true/false"),
        ("seed", -1, r"0 \.\. 4294967295"),
        ("seed", 2**32, "4294967295"),
        ("train.perceptual.vgg_seed", 2**32, "4294967295"),
        ("mlflow.experiment", "", "empty"),
        ("mlflow.evaluation_experiment", "  ", "empty"),
        ("mlflow.tracking_uri", "", "empty"),
        ("data.folder.pattern", "/etc/*", "inside the folder's path"),
        ("data.folder.pattern", "../*", "inside the folder's path"),
        ("data.folder.pattern", "sub/../../*.png", "inside the folder's path"),
        ("data.folder.pattern", "", "empty"),
        ("data.folder.mask_pattern", "{stem", r"\{stem\}"),
        ("data.folder.mask_pattern", "vessels.png", r"\{stem\}"),
        ("data.folder.mask_pattern", "{stem}_{0}.png", r"\{stem\}"),
        ("data.folder.fov_mask_pattern", "{name}_mask.tif", r"\{stem\}"),
        ("data.folder.fov_mask_pattern", "{stem!r}.tif", r"\{stem\}"),
        ("data.scales", [1, 2, 32], "1, 2, 4, 8, 16"),
    ],
)
def test_cli_refuses_values_that_would_fail_late(raw, tmp_path, capsys, key, value, why):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(_with(raw, key, value), sort_keys=False))
    rc, err = _cli_validate(f, capsys)
    assert rc == 2, err
    for line in err.strip().splitlines():  # one line per problem (blur_sigma [.nan, .nan] has two), no traceback
        assert re.search(f"{re.escape(str(f))}: {re.escape(key)}" + r"(\[\d\])?: ", line) and re.search(why, line), err
    with pytest.raises(ConfigError, match=re.escape(key)):  # every load, not only the CLI
        load_params(f)


@pytest.mark.parametrize("key,value", [
    ("data.folder.pattern", "**/*.png"),
    ("data.folder.mask_pattern", "manual1/{stem}_1stHO.png"),
    ("data.folder.fov_mask_pattern", "{stem}{stem}_mask.tif"),
    ("seed", 2**32 - 1),
    ("data.scales", [1, 16]),
    ("train.l1.lr", 1),  # an int where a float is wanted is fine
])
def test_edge_values_that_stay_valid(raw, key, value):
    raw = _with(raw, key, value)
    if key == "data.scales":
        raw["data"]["size"], raw["data"]["patches"]["crop"] = 512, 128
    params_from_dict(raw, "params.yaml")


def test_cli_refuses_duplicate_keys(tmp_path, capsys):
    text = (ROOT / "params.yaml").read_text().replace("  l1:\n    steps: 600\n", "  l1:\n    steps: 600\n    steps: 6\n")
    assert "steps: 6\n" in text
    f = tmp_path / "params.yaml"
    f.write_text(text)
    line = text.splitlines().index("    steps: 6") + 1
    rc, err = _cli_validate(f, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "duplicate key 'steps'" in err and f"line {line}" in err and str(f) in err, err


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("seed: 1\nmodel: &m {features: 8, depth: 2}\ntrain:\n  l1: {steps: 5}\n"
                 "evaluate:\n  <<: {speed_repeats: 2, figure_images: 1}\n  speed_repeats: 3\n")
    p = load_params(f)
    assert p.evaluate.speed_repeats == 3 and p.evaluate.figure_images == 1


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n", "null\n"])
def test_cli_refuses_an_empty_params_file(tmp_path, capsys, text):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    rc, err = _cli_validate(f, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{f} is empty" in err, err


def test_cli_validate_positional_and_option_agree(capsys):
    from retina_sr.cli import main

    assert main(["params", "validate", "--params", str(ROOT / "params.yaml"),
                 "--params", str(ROOT / "conf/study/full.yaml")]) == 0
    assert "study=full" in capsys.readouterr().out
