"""Trainer pieces: EMA math, schedules, PSNR, checkpoints (round trip, architecture mismatch),
phase initialisation, loss sets, resume-state handling; one tiny phase end to end without MLflow."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from retina_sr.config import ModelConfig
from retina_sr.evaluation.metrics import psnr_pt
from retina_sr.models import apply_variant, build_model
from retina_sr.models.checkpoint import CheckpointError, load_model, load_state_strict, save_model
from retina_sr.training import (
    ModelEMA,
    PhaseLosses,
    build_scheduler,
    init_weights,
    loss_spec,
    plan_phase,
    stage_fingerprint,
    train_phase,
)
from retina_sr.training.state import capture_rng, restore_rng
from test_training_data import make_patches, tiny_params


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_ema_update_math_and_state_round_trip():
    m = _Tiny()
    with torch.no_grad():
        m.lin.weight.fill_(1.0)
        m.lin.bias.fill_(0.0)
    ema = ModelEMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        m.lin.weight.fill_(3.0)
        m.lin.bias.fill_(4.0)
        m.count.fill_(7)
    ema.update(m)
    assert torch.allclose(ema.module.lin.weight, torch.full((1, 2), 2.0))  # 0.5 * 1 + 0.5 * 3
    assert torch.allclose(ema.module.lin.bias, torch.tensor([2.0]))
    assert int(ema.module.count) == 7  # integer buffers are copied
    ema.update(m)
    assert torch.allclose(ema.module.lin.weight, torch.full((1, 2), 2.5))
    assert not any(p.requires_grad for p in ema.module.parameters())
    other = ModelEMA(_Tiny(), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2 and other.decay == 0.5 and torch.equal(other.module.lin.weight, ema.module.lin.weight)


def test_ema_warmup_decay_follows_num_updates_formula():
    ema = ModelEMA(_Tiny(), decay=0.999)
    seen = []
    for _ in range(3):
        ema.update(_Tiny())
        seen.append(ema.current_decay())
    assert seen == pytest.approx([2 / 11, 3 / 12, 4 / 13])
    ema.updates = 10_000
    assert ema.current_decay() == 0.999
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(_Tiny(), decay=1.0)


def test_schedules():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sch = build_scheduler(opt, "cosine", 10)
    lrs = []
    for _ in range(10):
        opt.step()
        sch.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[-1] == pytest.approx(0.01) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    opt = torch.optim.Adam([p], lr=1.0)
    sch = build_scheduler(opt, "step", 8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    with pytest.raises(ValueError, match="lr_schedule"):
        build_scheduler(opt, "linear", 8)


def test_schedule_with_a_lead_segment():
    """A variant's catch-up: n steps at ratio x lr on their own schedule, then the phase's from its start."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.5)
    sch = build_scheduler(opt, "step", 4, lead=(8, 2.0))
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.5, 0.25, 0.125, 0.0625]


def _variant_run(tmp_path, variant: str, **train):
    from retina_sr.training.data import load_patches
    from retina_sr.training.trainer import TrainingRun

    make_patches(tmp_path)
    params, _ = tiny_params(tmp_path, train=train)
    meta = {"model": params.model.model_dump(mode="json"), "levels": params.data.levels,
            "scales": params.data.scales, "phase": "adversarial"}
    save_model(tmp_path / "models" / "adversarial" / "model.pt", build_model(params.model, params.data.levels), meta)
    train_set = load_patches(tmp_path / "data/patches/train.npy", params.data.scales)
    return params, TrainingRun(params, plan_phase(params, "modified", variant, root=tmp_path), torch.device("cpu"),
                               train_set)


@pytest.mark.parametrize("variant", ["shared", "resblock", "lrhead"])
def test_a_variant_catches_up_as_l1_trains(tmp_path, variant):
    """Every variant (new tensors, or the same tensors shared and recursed) first trains train.l1's budget
    with l1's lr, schedule and loss set, then its own steps with its own lr and the full loss set."""
    params, run = _variant_run(tmp_path, variant, l1={"steps": 3, "lr": 2e-3, "ridge_weight": 0.5},
                               modified={"steps": 2, "lr": 1e-4},
                               variants={"shared": {"share_weights": True, "recursions": 2},
                                         "resblock": {"block": "residual"}, "lrhead": {"arch": "lrhead"}})
    assert run.pretrain == 3 and run.total_steps == 5
    assert type(run.model).__name__ == ("LRHead" if variant == "lrhead" else "LapSRN")
    assert run.init["loaded"] > 0  # another architecture still starts from the adversarial model's matching tensors
    lrs, keys = [], []
    for _ in range(5):
        lrs.append(run.opt_g.param_groups[0]["lr"])
        keys.append(set(run.train_step()))
    assert lrs[0] == pytest.approx(2e-3) and lrs[3] == pytest.approx(1e-4)
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] > lrs[4]
    assert all("ridge" in k and "perceptual" not in k and "adv_g" not in k for k in keys[:3])  # l1's loss set
    assert all("ridge" not in k and "perceptual" in k for k in keys[3:])  # the phase's own


def test_a_variants_model_is_one_of_its_own_steps_not_of_its_catch_up(tmp_path, monkeypatch):
    """The validation may peak during the catch-up (flat curves, a few validation images): the stage's model
    must still have trained through its own phase (in the `real` study `shared` and `resblock` were picked at
    step 2500 of 3050, before their own steps, while the best step ranged over the whole stage)."""
    import retina_sr.training.trainer as tr

    _, run = _variant_run(tmp_path, "resblock", l1={"steps": 3}, modified={"steps": 2},
                          loop={"val_every": 1, "checkpoint_every": 1, "log_every": 1},
                          variants={"resblock": {"block": "residual"}})
    assert run.pretrain == 3 and run.total_steps == 5
    falling = iter([40.0, 39.0, 38.0, 30.0, 29.0])  # the first catch-up step validates best
    monkeypatch.setattr(tr, "validate", lambda *a, **k: {"x1": (v := next(falling)), "mean": v})
    from retina_sr.training.data import load_patches

    val = load_patches(tmp_path / "data/patches/val.npy", [1, 2, 4])
    for _ in range(5):
        run.accumulate(run.train_step())
        run.boundary(val, tmp_path / "last.pt", "fp", None, lambda _: None)
    assert run.best_step == 4 and run.best_val == 30.0  # the first own step, not step 1


def test_the_zoom_cycle_sets_each_steps_zoom_and_the_per_zoom_loss_means(tmp_path):
    from retina_sr.training.data import load_patches
    from retina_sr.training.trainer import TrainingRun

    make_patches(tmp_path)
    params, _ = tiny_params(tmp_path, train={"loop": {"zoom_cycle": [4, 1, 4, 2]}, "l1": {"steps": 8}})
    train = load_patches(tmp_path / "data/patches/train.npy", params.data.scales)
    run = TrainingRun(params, plan_phase(params, "l1", root=tmp_path), torch.device("cpu"), train)
    zooms = []
    for _ in range(8):
        terms = run.train_step()
        zooms.append(next(int(k[6:]) for k in terms if k.startswith("loss_x")))
        run.accumulate(terms)
    assert zooms == [4, 1, 4, 2, 4, 1, 4, 2]
    row = run.flush_log()
    assert set(row) >= {"loss_x1", "loss_x2", "loss_x4"} and row["loss_x4"] > 0  # each the mean of its own steps
    default, _ = tiny_params(tmp_path)
    run0 = TrainingRun(default, plan_phase(default, "l1", root=tmp_path), torch.device("cpu"), train)
    assert [run0.zoom_at(k) for k in range(6)] == list(default.data.scales) * 2  # null: data.scales, in turn


def test_a_variants_loss_weights_apply_to_its_catch_up_and_own_steps_only(tmp_path):
    """train.variants.<v>.loss replaces the phases' ridge/periodic weights for that variant (catch-up on
    l1 and own steps), not for the main line or another variant; the checkpoint meta records them."""
    from retina_sr.training.outputs import checkpoint_meta

    variants = {"subpixel": {"upsample": "subpixel", "loss": {"periodic_weight": 0.3}},
                "resblock": {"block": "residual"}}
    params, run = _variant_run(tmp_path, "subpixel", l1={"steps": 2, "ridge_weight": 0.5},
                               modified={"steps": 1}, variants=variants)
    assert loss_spec(params, "l1").periodic_weight == 0.0 and loss_spec(params, "modified").periodic_weight == 0.0
    assert loss_spec(params, "l1", "subpixel").periodic_weight == 0.3
    assert loss_spec(params, "l1", "subpixel").ridge_weight == 0.5  # unset: the phase's own
    assert loss_spec(params, "l1", "resblock").periodic_weight == 0.0
    with pytest.raises(ValueError, match="not in train.variants"):
        loss_spec(params, "l1", "nope")
    assert run.catch_up_losses is not None and run.catch_up_losses.periodic is not None
    assert run.losses.periodic is not None
    keys = [set(run.train_step()) for _ in range(3)]
    assert all("periodic" in k for k in keys)  # catch-up and own steps pay the term
    assert apply_variant(params.model, params.train.variants["subpixel"]).upsample == "subpixel"
    meta = checkpoint_meta(params, run.plan, run, "d")
    assert meta["loss_overrides"] == {"periodic_weight": 0.3}


def test_psnr_known_value():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr_pt(a, b).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_psnr_pt_y_and_mask_match_the_evaluations_psnr():
    import numpy as np

    from retina_sr.evaluation.metrics import psnr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((2, 16, 16), bool)
    mask[0, 2:9, 3:12] = True
    ta, tb = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 for x in (a, b))
    got = psnr_pt(ta, tb, mask=torch.from_numpy(mask), channel="y")
    assert float(got[0]) == pytest.approx(psnr(a[0], b[0], mask[0], channel="y"), abs=1e-3)
    assert math.isnan(float(got[1]))  # an empty mask: no pixel to score
    assert float(psnr_pt(ta, tb, channel="y")[1]) == pytest.approx(psnr(a[1], b[1], channel="y"), abs=1e-3)
    with pytest.raises(ValueError, match="channel"):
        psnr_pt(ta, tb, channel="lab")


def test_validation_scores_the_retina_not_the_aperture_edge():
    """An output wrong only along the aperture's edge validates as perfect; wrong inside, it does not
    (the whole-patch PSNR the trainer used before ranked models by the edge)."""
    import numpy as np

    from retina_sr.training import PatchSet, retina_masks, validate

    n, c = 2, 32
    fov = np.zeros((n, c, c), bool)
    fov[:, :, :20] = True  # the aperture's edge crosses each crop at column 20
    hr = np.zeros((n, c, c, 3), np.uint8)
    hr[fov] = 150
    val = PatchSet(hr=hr, lr={1: hr.copy()}, path="val.npy", fov=fov)  # type: ignore[arg-type]
    masks = retina_masks(val, side=100)  # radius 2 % of a 100-px image -> 3 px (the minimum)
    assert masks is not None and masks[:, :, :17].all() and not masks[:, :, 17:].any()  # the crop's own edge stays

    class Paint(nn.Module):  # identity at zoom 1, then one column band overwritten
        def __init__(self, cols: slice) -> None:
            super().__init__()
            self.cols, self.w = cols, nn.Parameter(torch.zeros(()))

        def forward(self, x, n_up=0):
            y = x.clone()
            y[..., self.cols] = 1.0
            return [y]

    rim = validate(Paint(slice(18, 23)), val, [1], torch.device("cpu"), side=100)
    inside = validate(Paint(slice(5, 7)), val, [1], torch.device("cpu"), side=100)
    assert rim["x1"] > 90 and inside["x1"] < 30  # (psnr_pt's floor on a zero MSE: 10 log10(255^2 / 1e-10))
    empty = PatchSet(hr=hr, lr={1: hr.copy()}, path="val.npy", fov=np.zeros_like(fov))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="val.npy: no validation patch keeps any retina"):
        retina_masks(empty, side=100)


def test_rng_capture_restore():
    import random

    import numpy as np

    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_checkpoint_round_trip_and_mismatch_error(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    model = build_model(cfg, levels=2)
    meta = {"model": cfg.model_dump(mode="json"), "levels": 2, "scales": [1, 2, 4], "phase": "l1", "variant": None,
            "step": 3, "study": "demo", "data_hash": "x", "ema": True, "val_psnr": 20.0}
    save_model(tmp_path / "m.pt", model, meta)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["meta"]["phase"] == "l1" and set(raw["state_dict"]) == set(model.state_dict())
    loaded, meta2 = load_model(tmp_path / "m.pt")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, n_up=2)[-1], loaded(x, n_up=2)[-1])
    assert meta2["val_psnr"] == 20.0
    other = build_model(ModelConfig(features=6, depth=1), levels=2)
    with pytest.raises(CheckpointError, match="architecture mismatch.*shape mismatches"):
        load_state_strict(other, raw["state_dict"], "m.pt")
    with pytest.raises(CheckpointError, match="architecture mismatch.*missing"):
        load_state_strict(build_model(cfg, levels=3), raw["state_dict"], "m.pt")


def test_init_weights_strict_and_partial(tmp_path):
    cfg = ModelConfig(features=4, depth=1)
    src = build_model(cfg, levels=2)
    meta = {"model": cfg.model_dump(mode="json"), "levels": 2, "scales": [1, 2, 4], "phase": "adversarial"}
    save_model(tmp_path / "model.pt", src, meta)
    same = build_model(cfg, levels=2)
    info = init_weights(same, tmp_path / "model.pt", partial=False, levels=2)
    assert info["loaded"] == len(src.state_dict()) and info["skipped"] == 0
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), src.state_dict().values()))
    variant = build_model(cfg.model_copy(update={"upsample": "subpixel"}), levels=2)
    before = {k: v.clone() for k, v in variant.state_dict().items()}
    info = init_weights(variant, tmp_path / "model.pt", partial=True, levels=2)
    assert info["loaded"] > 0 and info["skipped"] > 0 and info["loaded"] + info["skipped"] == len(before)
    for k, v in variant.state_dict().items():
        if k in src.state_dict() and src.state_dict()[k].shape == v.shape:
            assert torch.equal(v, src.state_dict()[k])
        else:
            assert torch.equal(v, before[k])
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        init_weights(build_model(ModelConfig(features=5, depth=1), levels=2), tmp_path / "model.pt", False, 2)
    with pytest.raises(CheckpointError, match="pyramid levels"):
        init_weights(build_model(cfg, levels=3), tmp_path / "model.pt", False, 3)
    with pytest.raises(FileNotFoundError, match="run its stage first"):
        init_weights(same, tmp_path / "absent" / "model.pt", False, 2)


def test_phase_plans_and_loss_sets(tmp_path):
    params, _ = tiny_params(tmp_path)
    assert plan_phase(params, "l1").init_from is None
    assert str(plan_phase(params, "adversarial").init_from) == "models/perceptual/model.pt"
    mod = plan_phase(params, "modified", "shared")
    assert mod.model_cfg.share_weights and mod.model_cfg.recursions == 2 and mod.partial_init
    assert str(mod.out_dir) == "models/modified/shared" and mod.stage == "train_modified@shared"
    with pytest.raises(ValueError, match="needs --variant"):
        plan_phase(params, "modified")
    with pytest.raises(ValueError, match="not in train.variants"):
        plan_phase(params, "modified", "nope")
    with pytest.raises(ValueError, match="unknown phase"):
        plan_phase(params, "l2")
    assert loss_spec(params, "l1").perceptual is None and loss_spec(params, "l1").adversarial is None
    assert loss_spec(params, "perceptual").perceptual is not None and loss_spec(params, "perceptual").adversarial is None
    spec = loss_spec(params, "modified")
    assert spec.adversarial is params.train.adversarial and spec.perceptual is params.train.perceptual
    assert spec.pixel_weight == params.train.modified.pixel_weight


def test_adversarial_loss_set_respects_warmup(tmp_path):
    from retina_sr.models import Discriminator

    params, _ = tiny_params(tmp_path)
    losses = PhaseLosses(loss_spec(params, "adversarial"))
    assert losses.vgg_description.startswith("random")
    disc = Discriminator(params.train.adversarial.discriminator)
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 32, 32)
    outs = [torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 32, 32, requires_grad=True)]
    total0, t0 = losses.generator(outs, hr, None, disc, step=0)
    assert set(t0) == {"pixel", "perceptual", "saliency", "adv_g", "loss"} and float(t0["adv_g"]) == 0.0
    total1, t1 = losses.generator(outs, hr, None, disc, step=params.train.adversarial.warmup_steps)
    assert float(t1["adv_g"]) > 0
    w = params.train.adversarial.adversarial_weight
    assert float((total1 - total0).detach()) == pytest.approx(w * float(t1["adv_g"]), rel=1e-4)
    d_loss, dt = losses.discriminator(outs[-1], hr, disc)
    assert d_loss.requires_grad and 0.0 <= float(dt["d_acc"]) <= 1.0
    l1 = PhaseLosses(loss_spec(params, "l1"))
    _, t = l1.generator(outs, hr)
    assert set(t) == {"pixel", "loss"} and l1.vgg_description == "none"


def test_tiny_l1_phase_writes_outputs_and_reuses_or_discards_last_pt(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    make_patches(tmp_path)
    params, _ = tiny_params(tmp_path)
    r = train_phase(params, "l1", track=False, progress=False)
    out = tmp_path / "models" / "l1"
    assert {p.name for p in out.iterdir()} >= {"model.pt", "metrics.json", "plots.csv"}
    assert (tmp_path / "models" / ".resume" / "l1" / "last.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    # metrics.json: the headline for `dvc metrics show`; the rest (steps, final PSNR, ...) in the result and MLflow
    assert set(metrics) == {"best_step", "val_psnr", "steps_per_s"}
    assert r.metrics["steps"] == 8 and metrics["best_step"] in (4, 8) and metrics["steps_per_s"] > 0
    assert set(metrics["val_psnr"]) == {"x1", "x2", "x4", "mean"} and set(r.metrics["final_val_psnr"]) == set(metrics["val_psnr"])
    # plots.csv: tidy (step, zoom, metric, value), no empty cell; the loss at the 4 logged steps, the
    # validation PSNR per zoom only at the validated steps
    with open(out / "plots.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "zoom", "metric", "value"] and all(all(v != "" for v in r_.values()) for r_ in rows)
    assert sorted({int(r_["step"]) for r_ in rows if r_["metric"] == "train loss"}) == [2, 4, 6, 8]
    val = [r_ for r_ in rows if r_["metric"] == "val PSNR (dB)"]
    assert {r_["zoom"] for r_ in val} == {"x1", "x2", "x4"} and {int(r_["step"]) for r_ in val} >= {8}
    model, meta = load_model(out / "model.pt")
    assert meta["phase"] == "l1" and meta["ema"] is True and meta["levels"] == 2 and meta["step"] == r.best_step
    assert meta["data_hash"] and math.isclose(meta["val_psnr"], r.val_psnr["mean"])
    assert meta["model"]["features"] == 4 and meta["scales"] == [1, 2, 4]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    # unchanged configuration, finished phase: last.pt is reused, nothing is retrained
    r2 = train_phase(params, "l1", track=False, progress=False)
    assert r2.resumed_from == 8 and r2.best_step == r.best_step
    assert all(torch.equal(weights[k], v) for k, v in load_model(out / "model.pt")[0].state_dict().items())
    # another configuration: the stale last.pt is ignored and training starts over
    params2, _ = tiny_params(tmp_path, train={"l1": {"steps": 8, "lr": 2e-3}})
    with caplog.at_level("INFO", logger="retina_sr"):
        r3 = train_phase(params2, "l1", track=False, progress=False)
    assert r3.resumed_from is None and "starting over" in caplog.text
    # the next phase refuses a checkpoint of another architecture, with a clear message
    params3, _ = tiny_params(tmp_path, model={"features": 5, "depth": 1})
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        train_phase(params3, "perceptual", track=False, progress=False)


# ------------------------------------------------------------------- what a resume state belongs to
def _fp(params, phase="l1", variant=None, data_hash="d", init=None):
    return stage_fingerprint(params, plan_phase(params, phase, variant), data_hash, init)


def _changed(params, key: str):
    """``params`` with the value at dotted ``key`` changed (numbers +1 / x2, booleans flipped, strings swapped)."""
    from retina_sr.config import params_from_dict

    raw = params.model_dump(mode="json")
    *parents, last = key.split(".")
    d = raw
    for k in parents:
        d = d[k]
    v = d[last]
    swap = {"auto": "cpu", "cosine": "step", "online": "stored", "demo": "real", "random": "imagenet",
            "relativistic": "vanilla", "plain": "residual", "deconv": "subpixel", "subpixel": "resize_conv", "resize_conv": "deconv", "bicubic": "learned"}
    d[last] = (not v if isinstance(v, bool) else (v * 2 or 0.5) if isinstance(v, float) else
               v + 1 if isinstance(v, int) else swap[v] if isinstance(v, str) else v)
    return params_from_dict(raw, "changed")


def test_fingerprint_follows_every_stage_parameter_and_only_those(tmp_path):
    """The resume fingerprint is the values of exactly the keys the stage depends on (phases.stage_params,
    what dvc.yaml lists): any of them changes it, any other key does not."""
    from retina_sr import phases
    from retina_sr.config import flatten

    params, _ = tiny_params(tmp_path)
    flat = flatten(params.model_dump(mode="json"))
    for phase in ("l1", "adversarial"):
        fp = _fp(params, phase)
        deps = phases.stage_params(phase)
        for key, value in flat.items():
            if value is None or isinstance(value, list) or key == "study":
                continue
            inside = any(key == d or key.startswith(d + ".") for d in deps)
            try:
                other = _changed(params, key)
            except Exception:  # noqa: BLE001 - a change the schema refuses: nothing to fingerprint
                continue
            assert (_fp(other, phase) != fp) == inside, (phase, key)
    fp = _fp(params)
    assert _fp(params, data_hash="other") != fp and _fp(params, init={"sha256": "x"}) != fp
    # a variant stage: its own variant's overrides count, another variant's do not
    shared = _fp(params, "modified", "shared")
    assert _fp(params, "modified", "subpixel") != shared
    assert _fp(_changed(params, "train.variants.subpixel.upsample"), "modified", "shared") == shared
    assert _fp(_changed(params, "train.variants.shared.recursions"), "modified", "shared") != shared
    assert _fp(_changed(params, "train.l1.steps"), "modified", "shared") != shared  # the catch-up budget


def _adversarial_run(tmp_path, fov: bool = True):
    from retina_sr.training.data import load_patches
    from retina_sr.training.trainer import TrainingRun

    make_patches(tmp_path)
    params, _ = tiny_params(tmp_path, train={"adversarial": {"warmup_steps": 1}})
    torch.manual_seed(123)
    meta = {"model": params.model.model_dump(mode="json"), "levels": params.data.levels,
            "scales": params.data.scales, "phase": "perceptual"}
    save_model(tmp_path / "models" / "perceptual" / "model.pt", build_model(params.model, params.data.levels), meta)
    train = load_patches(tmp_path / "data/patches/train.npy", params.data.scales)
    if not fov:
        train.fov = None
    plan = plan_phase(params, "adversarial", root=tmp_path)
    return TrainingRun(params, plan, torch.device("cpu"), train)


def test_train_step_runs_the_discriminator_once_on_real_images(tmp_path):
    """Per adversarial step: one D pass on the real batch (its logits serve the relativistic generator loss
    and the D update), one on the output for the generator loss, one on the detached output for D."""
    run = _adversarial_run(tmp_path)
    assert run.spec.adversarial is not None and run.spec.adversarial.gan_type == "relativistic"
    batches: list[int] = []
    run.disc.register_forward_hook(lambda m, inp, out: batches.append(inp[0].data_ptr()))
    run.train_step()  # warm-up step: no adversarial generator term, D still trains (real + fake)
    assert len(batches) == 2 and batches[0] != batches[1]
    batches.clear()
    terms = run.train_step()
    # the real batch first and once; then the output twice (the same storage: for G, then detached for D)
    assert len(batches) == 3 and batches.count(batches[0]) == 1 and batches[1] == batches[2]
    assert float(terms["adv_g"]) > 0
    # the reused real logits give the loss a separate pass would
    losses, disc = run.losses, run.disc
    hr, fake = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        d_real = disc(hr).float()
        a, _ = losses.discriminator(fake, hr, disc, d_real=d_real)
        b, _ = losses.discriminator(fake, hr, disc)
    torch.testing.assert_close(a, b)


def test_optimizers_and_ema_use_multi_tensor_paths(tmp_path):
    run = _adversarial_run(tmp_path)
    assert run.opt_g.defaults["foreach"] is True and not run.opt_g.defaults["fused"]  # CPU: foreach
    assert run.opt_d.defaults["foreach"] is True
    assert not torch.backends.cudnn.benchmark or torch.cuda.is_available()  # set on CUDA only
    m = _Tiny()
    ema = ModelEMA(m, decay=0.9, warmup=False)
    ref = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        m.lin.weight.add_(1.0)
    ema.update(m)
    for k, v in m.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(ema.module.state_dict()[k], 0.9 * ref[k] + 0.1 * v, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused Adam is CUDA-only")
def test_cuda_uses_fused_adam_and_cudnn_benchmark(tmp_path):
    from retina_sr.training.trainer import build_optimizer

    opt = build_optimizer(nn.Linear(2, 2).cuda(), 1e-3)
    assert opt.defaults["fused"] is True


def test_fov_mask_reaches_the_loss_only_when_a_term_reads_it(tmp_path, monkeypatch):
    from retina_sr.training import objectives

    seen: list[object] = []
    orig = objectives.PhaseLosses.generator

    def spy(self, outputs, hr, fov=None, *a, **k):
        seen.append(fov)
        return orig(self, outputs, hr, fov, *a, **k)

    monkeypatch.setattr(objectives.PhaseLosses, "generator", spy)
    run = _adversarial_run(tmp_path)
    assert run.spec.uses_fov
    run.train_step()
    assert isinstance(seen[-1], torch.Tensor) and seen[-1].dtype == torch.bool and seen[-1].shape == (4, 32, 32)
    params, _ = tiny_params(tmp_path)
    from retina_sr.training.data import load_patches
    from retina_sr.training.trainer import TrainingRun

    l1 = TrainingRun(params, plan_phase(params, "l1", root=tmp_path), torch.device("cpu"),
                     load_patches(tmp_path / "data/patches/train.npy", params.data.scales))
    assert not l1.spec.uses_fov
    l1.train_step()
    assert seen[-1] is None


def test_degrade_on_resolves_per_device_and_refuses_jpeg_on_the_device():
    from retina_sr.training.trainer import resolve_degrade_on

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_degrade_on("auto", cpu, None) == "host"
    assert resolve_degrade_on("auto", cuda, None) == "device"
    assert resolve_degrade_on("auto", cuda, (70, 90)) == "host"  # JPEG runs on the host only
    assert resolve_degrade_on("device", cpu, None) == "device"
    with pytest.raises(ValueError, match="jpeg_quality"):
        resolve_degrade_on("device", cuda, (70, 90))


def test_device_degradation_trains_records_itself_and_matches_the_host_batch(tmp_path):
    """degrade_on: device runs the torch ops where the model is (here the CPU): the same HR batch and the
    same sigmas as the host path, and the checkpoint says which one ran."""
    from retina_sr.training.data import load_patches
    from retina_sr.training.trainer import TrainingRun

    make_patches(tmp_path)
    host_p, _ = tiny_params(tmp_path, train={"loop": {"degrade_on": "host"}})
    dev_p, _ = tiny_params(tmp_path, train={"loop": {"degrade_on": "device"}},
                           data={"patches": {"noise_std": [0.0, 0.0]}})
    host_p = host_p.model_copy(update={"data": dev_p.data})  # no noise in both: the batches must agree
    train = load_patches(tmp_path / "data/patches/train.npy", host_p.data.scales)
    runs = [TrainingRun(p, plan_phase(p, "l1", root=tmp_path), torch.device("cpu"), train) for p in (host_p, dev_p)]
    assert [r.degrade_on for r in runs] == ["host", "device"]
    idx = runs[0].sampler.next()
    (lr_h, hr_h, _), (lr_d, hr_d, _) = (r._batch(idx, 2, 0) for r in runs)
    torch.testing.assert_close(hr_d, hr_h)
    assert float((lr_d - lr_h).abs().max()) <= 1 / 255 + 1e-6
    res = train_phase(dev_p, "l1", root=tmp_path, track=False, progress=False)
    _, meta = load_model(tmp_path / "models" / "l1" / "model.pt")
    assert meta["degradation"] == "device" and meta["compiled"] is False
    assert math.isfinite(res.val_psnr["mean"])


def test_compile_wraps_the_training_forward_only(tmp_path, monkeypatch):
    from retina_sr.training.data import load_patches
    from retina_sr.training.trainer import TrainingRun

    calls: list[dict] = []
    real = torch.compile

    def spy(model, **kw):
        calls.append(kw)
        return real(model, backend="eager", dynamic=kw.get("dynamic"))  # the wiring, not inductor's C++ build

    monkeypatch.setattr(torch, "compile", spy)
    make_patches(tmp_path)
    params, _ = tiny_params(tmp_path, train={"loop": {"compile": True}})
    run = TrainingRun(params, plan_phase(params, "l1", root=tmp_path), torch.device("cpu"),
                      load_patches(tmp_path / "data/patches/train.npy", params.data.scales))
    assert run.compiled and calls == [{"dynamic": False}] and run.model_dp is not run.model
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    for _ in range(3):
        run.train_step()
    after = run.model.state_dict()  # the bare module trains (EMA, checkpoints and validation use it)
    assert any(not torch.equal(before[k], after[k]) for k in before)
