"""params.yaml is validated on load; errors name the key; both parameter sets stay valid and in sync."""

from __future__ import annotations

import copy
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
