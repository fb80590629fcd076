"""The LR head (``model.arch: lrhead``): LapSRN's interface with every conv at the input resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from retina_sr.config import ModelConfig, VariantConfig
from retina_sr.inference import ONNX_PARITY_ATOL, Enhancer, OnnxEnhancer, export_onnx, receptive_radius
from retina_sr.inference.bench import parse_bench_arch
from retina_sr.models import HoldFilter, LapSRN, LRHead, apply_variant, arch_name, build_model, describe_model
from retina_sr.models.blocks import bicubic_phases
from retina_sr.models.checkpoint import load_model, save_model
from retina_sr.models.lrhead import DirectUp, PhaseHold, PhaseResidual


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(arch="lrhead", features=4, depth=2, **kw)


def _randomised(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():  # the residual convs start at zero: give every weight a value
        torch.nn.init.normal_(p, std=std)
    return model


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("recursions", [1, 2])
def test_shapes_every_zoom_and_gradients(block, recursions, direct):
    model = _randomised(build_model(_cfg(block=block, recursions=recursions, direct=direct), levels=3))
    assert isinstance(model, LRHead) and model.levels == 3 and model.max_zoom == 8
    x = torch.rand(2, 3, 9, 13)
    for n_up in range(4):
        outs = model(x, n_up=n_up)
        assert [tuple(o.shape) for o in outs] == [(2, 3, 9 * 2**k, 13 * 2**k) for k in range(n_up + 1)]
    sum(o.mean() for o in model(x)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_every_feature_conv_runs_at_the_input_resolution():
    """The point of the architecture: no feature map larger than the input (LapSRN's level k runs at 2**k);
    only the 3 -> 3 refinements C_k of the image branch run at their level's resolution."""
    seen: dict[str, list[tuple[int, int]]] = {"lrhead": [], "lapsrn": []}
    for arch in seen:
        model = build_model(ModelConfig(arch=arch, features=4, depth=2), levels=2)
        hooks = [m.register_forward_hook(lambda m, i, o, a=arch: seen[a].append(tuple(i[0].shape[-2:])))
                 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 3]
        model(torch.rand(1, 3, 8, 10))
        for h in hooks:
            h.remove()
    assert set(seen["lrhead"]) == {(8, 10)}
    assert (32, 40) in set(seen["lapsrn"]) or (16, 20) in set(seen["lapsrn"])


def test_each_zoom_has_its_own_sub_pixel_conv():
    model = build_model(_cfg(), levels=3)
    assert [c.out_channels for c in model.res] == [12, 48, 192]
    assert [(c.in_channels, c.out_channels) for c in model.refine] == [(3, 3)] * 3
    _randomised(model)
    x = torch.rand(1, 3, 8, 8)
    before = model(x, n_up=1)[-1].detach().clone()
    with torch.no_grad():
        model.res[1].weight.add_(1.0)  # the x4 head changes the x4 output, not the x2 one
    assert torch.equal(model(x, n_up=1)[-1], before)
    assert not torch.allclose(model(x, n_up=2)[-1], _randomised(build_model(_cfg(), levels=3))(x, n_up=2)[-1])


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("block", ["plain", "residual"])
def test_a_flat_image_stays_flat_whatever_the_weights(block, direct):
    """No sub-pixel grid: the hold filter nulls the s-periodic pattern of independently learned phases,
    so with any weights a flat input gives a flat output at every zoom (away from the zero-padded border).
    Without the filter the shuffled residual is s-periodic here (the check fails by ~10)."""
    model = _randomised(build_model(_cfg(block=block, direct=direct), levels=3), std=0.3)
    x = torch.full((1, 3, 28, 28), 0.4)
    with torch.no_grad():
        outs = model(x)
    for k, o in enumerate(outs[1:], start=1):
        s, r = 2**k, receptive_radius(model, k)  # the convs' zero padding reaches r input px in
        inner = o[0, :, r * s:-r * s, r * s:-r * s]
        assert (inner - inner.mean(dim=(1, 2), keepdim=True)).abs().max() < 1e-4, s  # values up to ~30


def test_hold_filter_nulls_its_period_and_keeps_flat_and_smooth_signals():
    h = HoldFilter(4, channels=1)
    n = torch.arange(64, dtype=torch.float32)
    grid = torch.cos(2 * torch.pi * n / 4)[None, None, None, :].repeat(1, 1, 9, 1)  # period 4 (and 2, below)
    assert h(grid)[..., 4:-4].abs().max() < 1e-5
    assert h(torch.cos(torch.pi * n)[None, None, None, :].repeat(1, 1, 9, 1))[..., 4:-4].abs().max() < 1e-5
    ramp = n[None, None, None, :].repeat(1, 1, 9, 1)
    assert torch.allclose(h(ramp)[..., 4:-4], ramp[..., 4:-4], atol=1e-4)  # symmetric: no shift, linear kept
    with pytest.raises(ValueError, match="zooms >= 2"):
        HoldFilter(1)


@pytest.mark.parametrize("direct", [False, True])
def test_image_branch_and_sums_stay_fp32_under_bf16_autocast(direct):
    model = _randomised(build_model(_cfg(direct=direct), levels=2), std=0.05)
    x = torch.rand(1, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(x)
    assert all(o.dtype == torch.float32 for o in outs)
    assert (outs[2] - model(x)[2]).abs().max() < 0.05  # bf16 only in the convs of the trunk and residuals


def test_bad_configs_and_inputs_are_clear_errors():
    with pytest.raises(ValidationError, match="share_weights"):
        ModelConfig(arch="lrhead", share_weights=True)
    with pytest.raises(ValidationError, match="image_branch"):
        ModelConfig(arch="lrhead", image_branch="learned")
    with pytest.raises(ValidationError, match="model.direct is the lrhead's"):
        ModelConfig(arch="lapsrn", direct=True)
    model = build_model(_cfg(), levels=2)
    with pytest.raises(ValueError, match="largest zoom is x4"):
        model(torch.rand(1, 3, 8, 8), n_up=3)
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 1, 8, 8))


def test_variant_changes_the_arch_and_loads_the_shared_parts():
    base = ModelConfig(features=4, depth=2)
    cfg = apply_variant(base, VariantConfig(arch="lrhead"))
    assert cfg.arch == "lrhead" and cfg.features == 4
    assert apply_variant(base, VariantConfig(arch="lrhead", depth=6)).depth == 6  # a variant may set its size
    lap, head = build_model(base, levels=3), build_model(cfg, levels=3)
    assert isinstance(lap, LapSRN) and isinstance(head, LRHead)
    own, theirs = head.state_dict(), lap.state_dict()
    same = {k for k in own if k in theirs and own[k].shape == theirs[k].shape}
    assert {"head.weight", "res0.weight"} <= same and any(k.startswith("embed.0.") for k in same)


def test_checkpoint_round_trip_and_description(tmp_path):
    cfg = _cfg()
    model = _randomised(build_model(cfg, levels=3))
    meta = {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8], "phase": "l1"}
    save_model(tmp_path / "m.pt", model, meta)
    loaded, meta2 = load_model(tmp_path / "m.pt")
    x = torch.rand(1, 3, 8, 8)
    assert isinstance(loaded, LRHead) and torch.equal(loaded(x)[-1], model(x)[-1])
    assert describe_model(meta2["model"], 3).startswith("LR head") and "zooms 1 to 8" in describe_model(meta2["model"], 3)
    assert describe_model(ModelConfig().model_dump()).startswith("LapSRN")


def test_direct_receptive_radius_and_tiling_reproduce_the_whole_image():
    cfg = _cfg(direct=True)
    model = _randomised(build_model(cfg, levels=3))
    # level 0: head 1 + trunk 2 + res0 1 = 4; the 5x5 image conv 2 more, the shuffle half a pixel
    assert receptive_radius(model, 2) == 7 and receptive_radius(model, 0) == 4
    enh = Enhancer(model, {"model": cfg.model_dump(), "levels": 3}, device="cpu")
    img = np.random.default_rng(0).random((130, 150, 3), dtype=np.float32)
    for zoom in (2, 4, 8):
        whole = enh.enhance(img, zoom)
        assert np.abs(enh.enhance(img, zoom, tile=60) - whole).max() < 1e-5, zoom


def test_receptive_radius_and_tiling_reproduce_the_whole_image():
    model = _randomised(build_model(_cfg(), levels=3))
    # level 0: head 1 + trunk 2 + res0 1 = 4; bicubic + C_1 add 2 + 1/2 input px at x2, then 1 + 1/4 at x4
    assert receptive_radius(model, 2) == 8
    enh = Enhancer(model, {"model": _cfg().model_dump(), "levels": 3}, device="cpu")
    img = np.random.default_rng(0).random((130, 150, 3), dtype=np.float32)
    whole = enh.enhance(img, 4)
    assert np.abs(enh.enhance(img, 4, tile=60) - whole).max() < 1e-5  # default overlap 4 r = 28


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("fuse", [True, False])
def test_onnx_export_with_parity_phase_bicubic_by_default(tmp_path, fuse, direct):
    cfg = _cfg(direct=direct)
    model = _randomised(build_model(cfg, levels=3), std=0.1)
    meta = {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8], "phase": "l1"}
    info = export_onnx(model, tmp_path / "m.onnx", 4, meta=meta, fuse=fuse)
    assert info.graph == ("phase" if fuse else "plain") and info.graph_error is None
    assert info.parity_max_abs <= ONNX_PARITY_ATOL
    if fuse:  # the image branch as phase convs: no cubic Resize left in the graph
        import onnx

        assert not any(n.op_type == "Resize" for n in onnx.load(info.path).graph.node)
    img = np.random.default_rng(1).random((23, 31, 3), dtype=np.float32)
    eager = Enhancer(model, meta, device="cpu").enhance(img, 4)
    assert np.abs(OnnxEnhancer(info.path, threads=1).enhance(img, 4) - eager).max() < ONNX_PARITY_ATOL


def test_bench_arch_names():
    assert parse_bench_arch("F16D3") == ("lapsrn", 16, 3)
    assert parse_bench_arch("lrhead:F32D3") == ("lrhead", 32, 3)
    assert parse_bench_arch("lrhead-direct:F16D3") == ("lrhead-direct", 16, 3)
    with pytest.raises(ValueError, match="is not one of lapsrn, lrhead, lrhead-direct"):
        parse_bench_arch("espcn:F16D3")


# ------------------------------------------------------------------------------------ model.direct
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_bicubic_phases_are_bicubic_interpolation(scale):
    x = torch.rand(2, 3, 9, 11)
    y = F.pixel_shuffle(F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), bicubic_phases(scale), groups=3), scale)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False) if scale > 1 else x
    assert (y - ref).abs().max() < 1e-5  # the border too (both replicate it)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_direct_up_folds_bicubic_and_its_refinement_into_one_input_grid_conv(scale):
    """The folded 5x5 conv equals bicubic sx followed by u + C(u) at the output resolution, bias included, except
    for the outermost output pixels (C zero-pads there); gradients reach C through the fold."""
    up = DirectUp(scale)
    torch.manual_seed(1)
    torch.nn.init.normal_(up.refine.weight, std=0.3)
    torch.nn.init.normal_(up.refine.bias, std=0.1)
    x = torch.rand(2, 3, 10, 12)
    u = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    ref, out = u + up.refine(u), F.pixel_shuffle(up.phases(x), scale)
    assert (out - ref)[..., 1:-1, 1:-1].abs().max() < 1e-5
    assert (out - ref).abs().max() > 1e-3  # the border differs: the fold is exact only inside
    out.sum().backward()
    assert up.refine.weight.grad is not None and up.refine.weight.grad.abs().sum() > 0
    fixed = up.fixed()
    assert torch.equal(fixed.phases(x), up.phases(x).detach()) and not list(fixed.parameters())


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_phase_hold_is_the_hold_filter_on_the_phases(scale):
    z = torch.randn(2, 3 * scale * scale, 7, 9)
    ref = HoldFilter(scale)(F.pixel_shuffle(z, scale))
    out = F.pixel_shuffle(PhaseHold(scale)(z), scale)
    inner = (slice(None), slice(None), slice(scale, -scale), slice(scale, -scale))
    assert (out - ref)[inner].abs().max() < 1e-5  # the first and last input pixel pad differently


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_phase_residual_folds_into_one_3x3_conv_exactly(scale):
    res = PhaseResidual(6, scale)
    torch.nn.init.normal_(res.conv.weight)
    g = torch.randn(2, 6, 7, 9)
    fixed = res.fixed()
    assert fixed.kernel_size == (3, 3) and fixed.bias is None
    assert (fixed(g) - res(g)).abs().max() < 1e-5  # the border too: the 1x1 conv maps zero padding to zero


def test_untrained_direct_head_is_single_step_bicubic_and_every_conv_runs_on_the_input_grid():
    model = build_model(_cfg(direct=True), levels=3)
    x = torch.rand(1, 3, 8, 10)
    sizes = []
    hooks = [m.register_forward_pre_hook(lambda m, i: sizes.append(tuple(i[0].shape[-2:])))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    outs = model(x)
    for h in hooks:
        h.remove()
    assert set(sizes) == {(8, 10)}  # trunk, residuals, the hold on the phases: nothing at the output resolution
    assert torch.equal(outs[0], x)
    for k, o in enumerate(outs[1:], start=1):
        ref = F.interpolate(x, scale_factor=2**k, mode="bicubic", align_corners=False)  # not cascaded 2x steps
        assert (o - ref).abs().max() < 1e-5, k


@pytest.mark.parametrize("direct", [False, True])
def test_top_is_the_last_output_and_names_say_direct(direct):
    cfg = _cfg(direct=direct)
    model = _randomised(build_model(cfg, levels=3))
    x = torch.rand(1, 3, 8, 8)
    for n_up in range(4):
        assert torch.allclose(model.top(x, n_up), model(x, n_up)[-1], atol=1e-6)
    m = cfg.model_dump()
    assert arch_name(m) == ("LR head direct" if direct else "LR head")
    assert ("every zoom direct" in describe_model(m)) == direct
