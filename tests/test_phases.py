"""The phase table (src/retina_sr/phases.py) is consistent with the configuration schema and the paths;
everything that names the phases reads it (dvc.yaml/Snakefile: tests/test_orchestration.py)."""

from __future__ import annotations

import pytest

from retina_sr import paths, phases
from retina_sr.config import Params, TrainConfig


def test_table_is_a_chain_over_the_train_sections():
    names = list(phases.NAMES)
    assert len(set(names)) == len(names) and phases.PHASES[0].previous is None
    for i, ph in enumerate(phases.PHASES):
        if ph.previous is not None:
            assert names.index(ph.previous) < i, ph.name  # starts from an earlier phase
        assert set(ph.sections) <= set(TrainConfig.model_fields), ph.name
        assert ph.sections[-1] == ph.name  # its own section last
        assert ph.catch_up is None or ph.partial_init
    # the schema has exactly one section per phase, plus the shared loop and the variants
    assert set(TrainConfig.model_fields) == {*names, "loop", "variants"}
    assert phases.VARIANTS_KEY == "train.variants" and Params().value(phases.VARIANTS_KEY)


def test_names_paths_and_stage_keys_derive_from_the_table():
    assert phases.stage_name("l1") == "train_l1" and phases.stage_name("modified", "shared") == "train_modified@shared"
    assert str(paths.model_file("perceptual")) == "models/perceptual/model.pt"
    assert str(paths.phase_dir("modified", "shared")) == "models/modified/shared"
    assert str(paths.resume_file("modified", "shared")) == "models/.resume/modified/shared/last.pt"
    with pytest.raises(ValueError, match="needs a variant"):
        paths.phase_dir("modified")
    with pytest.raises(ValueError, match="has no variants"):
        paths.phase_dir("l1", "shared")
    with pytest.raises(ValueError, match="unknown phase 'l2': use one of l1, perceptual, adversarial, modified"):
        phases.get("l2")
    assert phases.stage_params("adversarial") == [*phases.STAGE_KEYS, "train.perceptual", "train.adversarial"]
    assert phases.stage_params("modified", "shared")[-1] == "train.variants.shared"
    assert phases.model_names(["b", "a"]) == ["l1", "perceptual", "adversarial", "modified_a", "modified_b"]


def test_loss_sets_and_cli_choices_come_from_the_table(tmp_path):
    import argparse

    from retina_sr.training import loss_spec
    from retina_sr.training.stage import add_arguments

    p = Params()
    for ph in phases.PHASES:
        spec = loss_spec(p, ph.name)
        assert (spec.perceptual is not None) == ("perceptual" in ph.losses), ph.name
        assert (spec.adversarial is not None) == ("adversarial" in ph.losses), ph.name
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    choices = next(a.choices for a in parser._actions if a.dest == "phase")
    assert tuple(choices) == phases.NAMES
