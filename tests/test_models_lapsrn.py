"""LapSRN: shapes at every zoom and level, gradients, weight sharing, variants, checkpoints."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from retina_sr.config import ModelConfig, VariantConfig
from retina_sr.models import LapSRN, apply_variant, build_model, load_model, save_model
from retina_sr.models.checkpoint import CheckpointError

torch.set_num_threads(1)

VARIANTS = [
    dict(share_weights=s, recursions=r, block=b, upsample=u)
    for s, r, b, u in itertools.product([False, True], [1, 2], ["plain", "residual"], ["deconv", "resize_conv", "subpixel"])
]


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(features=4, depth=2, **kw)


@pytest.mark.parametrize("branch", ["bicubic", "learned"])
@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_shapes_every_zoom_and_gradients(kw, branch):
    torch.manual_seed(0)
    model = build_model(_cfg(image_branch=branch, **kw), levels=2)
    assert isinstance(model, LapSRN) and model.levels == 2 and model.max_zoom == 4
    x = torch.rand(2, 3, 6, 10)
    for n_up in range(3):
        outs = model(x, n_up=n_up)
        assert len(outs) == n_up + 1
        for k, o in enumerate(outs):
            assert o.shape == (2, 3, 6 * 2**k, 10 * 2**k)
            assert torch.isfinite(o).all()
    outs = model(x)  # default: all levels
    assert len(outs) == 3
    if branch == "bicubic":
        # zero-initialised residual convs: only they learn in the first step, then everything does
        sum(o.square().mean() for o in outs).backward()
        for name, p in model.named_parameters():
            assert (p.grad.abs().sum() > 0) == name.startswith(("res0", "res.")), name
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.zero_grad()
        outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("arch", ["lapsrn", "lrhead"])
def test_untrained_bicubic_branch_is_the_baseline(arch):
    """image_branch=bicubic: level 0 returns the input and level k cascaded 2x bicubic (Keys a=-0.75,
    OpenCV's INTER_CUBIC kernel), so training starts at the baseline a user already has (the LR head too)."""
    import cv2
    import numpy as np
    import torch.nn.functional as F

    model = build_model(_cfg(arch=arch), levels=2)
    x = torch.rand(1, 3, 16, 20)
    outs = model(x)
    assert torch.equal(outs[0], x)
    ref = F.interpolate(F.interpolate(x, scale_factor=2.0, mode="bicubic"), scale_factor=2.0, mode="bicubic")
    assert torch.allclose(outs[2], ref, atol=1e-6)
    img = x[0].permute(1, 2, 0).numpy()
    cv = cv2.resize(img, (40, 32), interpolation=cv2.INTER_CUBIC)
    assert np.abs(outs[1][0].permute(1, 2, 0).detach().numpy() - cv)[2:-2, 2:-2].max() < 1e-5


def test_levels_zero_is_pure_restoration():
    model = build_model(_cfg(), levels=0)
    assert model.levels == 0 and model.max_zoom == 1
    x = torch.rand(1, 3, 8, 8)
    outs = model(x)
    assert len(outs) == 1 and outs[0].shape == x.shape
    # level 0 is the input plus a small residual
    assert (outs[0] - x).abs().mean() < 0.5
    with pytest.raises(ValueError, match="n_up=1 outside 0..0"):
        model(x, n_up=1)


def test_bad_inputs_are_clear_errors():
    model = build_model(_cfg(), levels=1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="largest zoom is x2"):
        model(torch.rand(1, 3, 8, 8), n_up=2)
    with pytest.raises(ValueError, match="levels must be >= 0"):
        build_model(_cfg(), levels=-1)
    with pytest.raises(TypeError):
        build_model({"features": 4}, levels=1)  # type: ignore[arg-type]


def _conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


@pytest.mark.parametrize("upsample", ["deconv", "resize_conv", "subpixel"])
@pytest.mark.parametrize("levels", [1, 3])
def test_weight_sharing_parameter_count(upsample, levels):
    f, d = 5, 3
    per_embed = d * _conv(f, f)
    if upsample == "deconv":
        up_f, up_i = _conv(f, f, 4), _conv(3, 3, 4, bias=False)
    elif upsample == "resize_conv":
        up_f, up_i = _conv(f, f), _conv(3, 3, bias=False)
    else:
        up_f, up_i = _conv(f, 4 * f), _conv(3, 12, bias=False)
    head, res = _conv(3, f), _conv(f, 3)
    per_level = up_f + up_i + res
    bicubic = build_model(ModelConfig(features=f, depth=d, upsample=upsample), levels)  # no image-branch weights
    assert sum(p.numel() for p in bicubic.parameters()) == head + res + levels * (per_embed + up_f + res)
    expected_plain = head + res + levels * per_embed + levels * per_level
    expected_shared = head + res + per_embed + per_level

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    plain = build_model(ModelConfig(features=f, depth=d, upsample=upsample, image_branch="learned"), levels)
    shared = build_model(ModelConfig(features=f, depth=d, upsample=upsample, share_weights=True,
                                     image_branch="learned"), levels)
    assert count(plain) == expected_plain
    assert count(shared) == expected_shared
    assert count(plain) - count(shared) == (levels - 1) * (per_embed + per_level)
    # recursion reuses the block: no new parameters
    rec = build_model(ModelConfig(features=f, depth=d, upsample=upsample, share_weights=True, recursions=3,
                                  image_branch="learned"), levels)
    assert count(rec) == expected_shared


def test_residual_block_parameter_count():
    f = 4
    m = build_model(ModelConfig(features=f, depth=3, block="residual"), levels=1)
    # ceil(3 / 2) = 2 residual blocks of two convs each
    assert sum(p.numel() for p in m.embed.parameters()) == 2 * 2 * _conv(f, f)


def test_recursion_changes_output_but_not_weights():
    torch.manual_seed(0)
    m1 = build_model(_cfg(share_weights=True, recursions=1, image_branch="learned"), levels=1)
    m3 = build_model(_cfg(share_weights=True, recursions=3, image_branch="learned"), levels=1)
    m3.load_state_dict(m1.state_dict())
    x = torch.rand(1, 3, 8, 8)
    assert not torch.allclose(m1(x)[-1], m3(x)[-1])


def test_apply_variant():
    base = ModelConfig(features=8, depth=4, upsample="deconv")
    v = apply_variant(base, VariantConfig(share_weights=True, recursions=2))
    assert (v.share_weights, v.recursions, v.upsample, v.features, v.depth) == (True, 2, "deconv", 8, 4)
    assert base.share_weights is False and base.recursions == 1  # original untouched
    assert apply_variant(base, VariantConfig()) == base
    assert apply_variant(base, VariantConfig(upsample="subpixel", block="residual")).upsample == "subpixel"


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = _cfg(upsample="subpixel", share_weights=True, recursions=2)
    model = build_model(cfg, levels=2)
    path = tmp_path / "m" / "model.pt"
    save_model(path, model, {"model": cfg.model_dump(), "levels": 2, "scales": [1, 2, 4], "phase": "l1"})
    loaded, meta = load_model(path)
    assert meta["levels"] == 2 and not loaded.training
    x = torch.rand(1, 3, 8, 8)
    model.eval()
    for a, b in zip(model(x), loaded(x)):
        torch.testing.assert_close(a, b)
    # a checkpoint whose meta disagrees with its weights is a clear error
    other = build_model(_cfg(), levels=2)
    save_model(tmp_path / "bad.pt", other, {"model": cfg.model_dump(), "levels": 2, "scales": [1, 2, 4], "phase": "l1"})
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        load_model(tmp_path / "bad.pt")


def test_channels_last_gives_same_result():
    torch.manual_seed(0)
    model = build_model(_cfg(), levels=1).eval()
    x = torch.rand(1, 3, 8, 8)
    ref = model(x)[-1]
    out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))[-1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_onnx_export_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(_cfg(upsample="deconv"), levels=1).eval()

    class Last(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, n_up=1)[-1]

    x = torch.rand(1, 3, 8, 8)
    path = tmp_path / "m.onnx"
    torch.onnx.export(Last(model), (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), model(x, n_up=1)[-1].detach(), rtol=1e-4, atol=1e-5)


def test_checkpoint_of_compiled_wrapper_has_plain_keys(tmp_path):
    cfg = _cfg()
    model = build_model(cfg, levels=1)

    class Wrapper(nn.Module):  # what torch.compile returns: the module under `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    save_model(tmp_path / "c.pt", Wrapper(model), {"model": cfg.model_dump(), "levels": 1, "scales": [1, 2], "phase": "l1"})
    loaded, _ = load_model(tmp_path / "c.pt")
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_incomplete_checkpoint_is_a_clear_error(tmp_path):
    """A file in the retina-sr format but without meta['levels'] (hand-made, truncated meta) is a
    CheckpointError naming what is missing, not a KeyError traceback."""
    cfg = _cfg()
    model = build_model(cfg, levels=1)
    path = tmp_path / "m.pt"
    torch.save({"format": "retina-sr/1", "state_dict": model.state_dict(), "meta": {"model": cfg.model_dump()}}, path)
    with pytest.raises(CheckpointError, match="levels"):
        load_model(path)
    torch.save({"format": "retina-sr/1", "meta": {"model": cfg.model_dump(), "levels": 1}}, path)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_model(path)


@pytest.mark.parametrize("branch", ["learned", "bicubic"])
def test_image_branch_and_residual_sums_stay_fp32_under_bf16_autocast(branch):
    """bf16 resolves ~1/256 on [0.5, 1), one 8-bit level: the image branch (its upsampling and every
    level's residual addition) runs in fp32 under autocast; only the feature convs use bf16."""
    torch.manual_seed(0)
    model = build_model(_cfg(image_branch=branch), levels=3).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)  # non-zero residuals (the bicubic branch starts with zero ones)
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype)) for m in model.up_img]
    x = torch.rand(1, 3, 12, 16) * 0.5 + 0.5
    with torch.no_grad():
        ref = model(x, n_up=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, n_up=3)
    for h in hooks:
        h.remove()
    assert seen and all(d == torch.float32 for d in seen)  # image-branch upsampling in fp32
    assert all(o.dtype == torch.float32 for o in low)  # every level's image (after its residual sum)
    assert model.res0.weight.dtype == torch.float32  # autocast, not a converted model
    for a, b in zip(ref, low):
        assert (a - b).abs().max() <= 2 / 255, (a - b).abs().max()
