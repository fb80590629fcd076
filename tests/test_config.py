"""The configuration: one source (conf/, composed by Hydra) that DVC and Snakemake both read; params.yaml
validated on load; errors name the key; the field defaults are the demo study."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from retina_sr.config import (
    ConfigError,
    Params,
    compose,
    compose_yaml,
    flatten,
    levels_for_zoom,
    load_composed,
    load_params,
    params_from_dict,
    parse_arch,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture()
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_are_the_demo_study():
    p = load_params(ROOT / "params.yaml")
    assert p.study == "demo" and p.data.source == "demo"
    assert p.train.perceptual.vgg_weights == "random"


def test_full_study_is_valid_and_paper_sized():
    p = load_composed(["study=full"], CONF)
    assert p.study == "full" and p.data.source == "kaggle" and p.data.n_images == 1000
    assert p.data.size == 1024 and (p.model.features, p.model.depth) == (64, 10)
    assert p.train.perceptual.vgg_weights == "imagenet" and p.train.loop.batch_size == 64
    # the overlay keeps keys it does not name
    assert p.data.scales == [1, 2, 4, 8] and p.data.patches.crop == 128 and p.train.loop.grad_clip == 1.0


def test_real_study_composes_and_is_valid():
    p = load_composed(["study=real"], CONF)
    assert p.study == "real" and p.data.source == "folder" and len(p.data.extra_folders) == 1
    assert p.train.l1.steps == 4000 and p.train.loop.val_every == 250
    # its main line is the LR head, and the network modifications are the LR head's (conf/variants/lrhead.yaml):
    # the study's group choice replaces LapSRN's set instead of merging into it
    assert (p.model.arch, p.model.features, p.model.depth) == ("lrhead", 32, 5)
    assert set(p.train.variants) == {"resblock"} and p.train.variants["resblock"].block == "residual"
    assert set(load_composed([], CONF).train.variants) == {"shared", "resblock", "subpixel"}
    assert set(load_composed(["study=real", "variants=lapsrn"], CONF).train.variants) == {"shared", "resblock", "subpixel"}


def test_a_variant_loss_merges_into_its_variant(tmp_path):
    """A study's per-variant loss weights merge into the group's variant (its architecture stays)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "study" / "mine.yaml").write_text(
        "# @package _global_\nstudy: demo\ntrain:\n  variants:\n    shared:\n      loss:\n        ridge_weight: 20.0\n")
    shared = load_composed(["study=mine"], conf).train.variants["shared"]
    assert shared.share_weights and shared.recursions == 2 and shared.loss.ridge_weight == 20.0


# ------------------------------------------------------------ one source: conf/, composed by Hydra
def test_params_yaml_is_the_hydra_composition_byte_for_byte():
    """params.yaml is generated from conf/ (DVC writes it on `dvc exp run`): the committed file is what
    `retina-sr params compose --out params.yaml` and DVC write, so the source and the file cannot drift."""
    assert (ROOT / "params.yaml").read_text() == compose_yaml(conf_dir=CONF), (
        "params.yaml is stale: edit conf/ and run `retina-sr params compose --out params.yaml` (or `dvc exp run`)")


def test_composition_is_what_dvc_writes(tmp_path):
    """Our composition and DVC's own Hydra integration (dvc.utils.hydra.compose_and_dump, what
    `dvc exp run -S study=full` calls) give the same file."""
    from dvc.utils.hydra import compose_and_dump

    for overrides in ([], ["study=full"], ["study=real", "train.l1.steps=5"]):
        out = tmp_path / "params.yaml"
        compose_and_dump(out, str(CONF), None, "config", str(tmp_path), overrides)
        assert out.read_text() == compose_yaml(overrides, CONF), overrides


def test_one_edit_in_conf_reaches_every_composition(tmp_path):
    """A user edits one file (conf/config.yaml); every study composed from it sees the edit."""

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    text = (conf / "config.yaml").read_text()
    assert text.count("    val_every: 50\n") == 1
    (conf / "config.yaml").write_text(text.replace("    val_every: 50\n", "    val_every: 7\n"))
    assert load_composed([], conf).train.loop.val_every == 7
    assert load_composed(["study=full"], conf).train.loop.val_every == 500  # the full study sets its own
    assert load_composed(["study=real"], conf).train.loop.warmup_steps == 0
    (conf / "config.yaml").write_text(text.replace("    warmup_steps: 0\n", "    warmup_steps: 3\n"))
    assert load_composed(["study=real"], conf).train.loop.warmup_steps == 3


def test_hydra_overrides_and_their_errors_name_the_key():
    assert compose(["study=full", "train.l1.steps=7"], CONF)["train"]["l1"]["steps"] == 7
    with pytest.raises(ConfigError, match=r"study.*fulll") as e:
        compose(["study=fulll"], CONF)
    assert "demo" in str(e.value) and "\n" not in str(e.value)  # the choices, on one line
    with pytest.raises(ConfigError, match=r"train\.l1\.stepz"):
        compose(["train.l1.stepz=5"], CONF)
    with pytest.raises(ConfigError, match=r"train\.l1\.steps: .*true/false"):
        load_composed(["train.l1.steps=true"], CONF)
    with pytest.raises(ConfigError, match="config.yaml not found"):
        compose([], ROOT / "nowhere")


def test_field_defaults_are_the_demo_study():
    """One source of defaults: Params() is the demo composition (but for a folder of one machine)."""
    composed, defaults = flatten(compose([], CONF)), flatten(Params().model_dump(mode="json"))
    differ = {k: (composed.get(k), defaults.get(k)) for k in set(composed) | set(defaults)
              if composed.get(k) != defaults.get(k)}
    assert differ == {"evaluate.peers_dir": ("../shared/peers/opencv_dnn_superres", None)}


def test_a_partial_section_gets_the_demo_defaults():
    """Every section's class defaults are the demo values too (not a generic phase budget)."""
    p = params_from_dict({"train": {"l1": {"lr": 0.01}, "modified": {"ridge_weight": 1.0}}}, "partial.yaml")
    assert (p.train.l1.steps, p.train.l1.lr) == (600, 0.01) and (p.train.modified.steps, p.train.modified.lr) == (50, 3e-4)
    assert p.train.loop == Params().train.loop and p.data == Params().data


def test_override_files_merge_on_top(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("train:\n  loop:\n    batch_size: 3\n  variants:\n    extra: {block: residual}\n")
    p = load_params(ROOT / "params.yaml", f)
    assert p.train.loop.batch_size == 3 and p.train.loop.val_every == 50  # merged key by key
    assert set(p.train.variants) == {"shared", "resblock", "subpixel", "extra"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"train"):
        load_params(ROOT / "params.yaml", bad)


def test_value_reads_dotted_keys():
    p = Params()
    assert p.value("train.loop.batch_size") == 8 and p.value("train.variants.shared")["recursions"] == 2
    with pytest.raises(KeyError, match="train.loop.nope"):
        p.value("train.loop.nope")


def test_zoom_levels_and_arch_parsing():
    assert [levels_for_zoom(z) for z in (1, 1.5, 2, 3, 4, 8, 16)] == [0, 1, 1, 2, 2, 3, 4]
    with pytest.raises(ValueError, match="below 1"):
        levels_for_zoom(0.5)
    assert parse_arch("F16D3") == (16, 3) and parse_arch(" f64d10 ") == (64, 10)
    for bad in ("F16", "F0D3", "16x3"):
        with pytest.raises(ValueError, match="F<features>D<depth>"):
            parse_arch(bad)


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
        (("train", "variants"), {"Bad Name": {}}, r"must match"),
        (("train", "variants"), {}, r"at least one variant"),
        (("data", "n_images"), 2, r"data\.n_images"),
        (("train", "adversarial", "discriminator", "n_layers"), 6, r"smaller than the discriminator's smallest input"),
        (("train", "loop", "zoom_cycle"), [4, 4, 16], r"zoom_cycle \[4, 4, 16\] may only use zooms of data\.scales.*remove \[16\]"),
        (("train", "loop", "zoom_cycle"), [], r"zoom_cycle"),
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


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}}) == {"a.b": 1, "a.c.d": [1, 2]}


def test_cli_validate(capsys):
    from retina_sr.cli import main

    assert main(["params", "validate", str(ROOT / "params.yaml"), str(ROOT / "conf/study/full.yaml")]) == 0
    assert "study=full" in capsys.readouterr().out
    # a study overlay that picks another config group is Hydra's to compose, not a plain override file
    assert main(["params", "validate", str(ROOT / "params.yaml"), str(ROOT / "conf/study/real.yaml")]) != 0
    assert "retina-sr params compose --study real" in capsys.readouterr().err


def test_cli_compose_writes_what_dvc_writes(tmp_path, capsys, monkeypatch):
    from retina_sr.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "params.yaml"
    assert main(["params", "compose", "--study", "full", "--out", str(out), "train.l1.steps=9"]) == 0
    assert out.read_text() == compose_yaml(["study=full", "train.l1.steps=9"], CONF)
    assert main(["params", "compose", "--study", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


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
    ("train.loop.zoom_cycle", [4]),  # a subset of data.scales: docs/ablation.md trains x4 alone
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
