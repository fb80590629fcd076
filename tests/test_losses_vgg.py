"""VGG16 features without torchvision: state-dict layout, weights sources, errors, perceptual loss."""

from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from retina_sr.losses import VGG16_FILE, VGG_LAYERS, PerceptualLoss, VGG16Features, VGGWeightsError
from retina_sr.losses.vgg import vgg16_feature_modules

torch.set_num_threads(1)

# torchvision vgg16: conv indices in `features` and their (out, in) channels
TV_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
            17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}


def _torchvision_state(with_classifier: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cout, cin) in TV_CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.05
    if with_classifier:  # small stand-ins: only the key names matter, they are ignored
        for i in (0, 3, 6):
            state[f"classifier.{i}.weight"] = torch.randn(4, 4, generator=g)
            state[f"classifier.{i}.bias"] = torch.randn(4, generator=g)
    return state


def test_layout_is_torchvision():
    keys = set(vgg16_feature_modules().state_dict())
    expected = {f"{i}.{p}" for i in TV_CONVS for p in ("weight", "bias")}
    assert keys == expected
    assert VGG_LAYERS["relu1_2"] == 3 and VGG_LAYERS["relu2_2"] == 8
    assert VGG_LAYERS["relu3_3"] == 15 and VGG_LAYERS["relu4_3"] == 22


@pytest.mark.parametrize("with_classifier", [False, True])
def test_load_torchvision_file_and_manual_conv(tmp_path, with_classifier):
    state = _torchvision_state(with_classifier)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    vgg = VGG16Features(str(path), ["relu1_1", "relu1_2"])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert vgg.weights_description == f"file:{path} sha256:{sha}"
    x = torch.rand(1, 3, 12, 10)
    feats = vgg(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    r11 = F.relu(F.conv2d((x - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1))
    r12 = F.relu(F.conv2d(r11, state["features.2.weight"], state["features.2.bias"], padding=1))
    torch.testing.assert_close(feats["relu1_1"], r11, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats["relu1_2"], r12, rtol=1e-4, atol=1e-5)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(VGGWeightsError, match="not found"):
        VGG16Features(str(tmp_path / "nope.pth"), ["relu1_2"])
    state = _torchvision_state(False)
    del state["features.28.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(VGGWeightsError, match=r"missing 1 keys.*features\.28\.bias"):
        VGG16Features(str(tmp_path / "partial.pth"), ["relu1_2"])
    state = _torchvision_state(False)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(VGGWeightsError, match="shape mismatch"):
        VGG16Features(str(tmp_path / "shape.pth"), ["relu1_2"])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VGGWeightsError, match="not a readable"):
        VGG16Features(str(tmp_path / "junk.pth"), ["relu1_2"])
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        VGG16Features("random", ["relu9_9"])


def test_imagenet_offline_is_a_clear_error(monkeypatch):
    calls = {}

    def offline(url, **kw):
        calls.update(kw, url=url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(VGGWeightsError) as info:
        VGG16Features("imagenet", ["relu2_2"])
    msg = str(info.value)
    assert str(Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE) in msg
    assert "vgg_weights" in msg and "URLError" in msg
    assert calls["url"] == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert calls["check_hash"] is True


def test_imagenet_uses_hub_state(monkeypatch):
    state = _torchvision_state(True, seed=3)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: state)
    vgg = VGG16Features("imagenet", ["relu1_2"])
    assert vgg.weights_description == "imagenet:vgg16-397923af.pth sha256-prefix 397923af"
    torch.testing.assert_close(vgg.features[0].weight, state["features.0.weight"])


def test_imagenet_file_placed_by_hand_is_hash_checked(tmp_path, monkeypatch):
    """torch.hub checks the hash only when it downloads: a wrong file already in its cache (e.g.
    placed by hand offline) must be an error, not silently recorded as the ImageNet weights."""
    state = _torchvision_state(False, seed=4)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: state)  # what hub would load
    cached = tmp_path / "checkpoints" / VGG16_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"other weights")
    with pytest.raises(VGGWeightsError, match="397923af"):
        VGG16Features("imagenet", ["relu1_2"])
    cached.unlink()  # nothing cached: hub downloads and checks the hash itself
    assert VGG16Features("imagenet", ["relu1_2"]).weights_description.startswith("imagenet:")


def test_random_is_seeded_frozen_and_eval():
    a = VGG16Features("random", ["relu1_2"], seed=0)
    b = VGG16Features("random", ["relu1_2"], seed=0)
    c = VGG16Features("random", ["relu1_2"], seed=1)
    assert a.weights_description == "random(seed=0)"
    torch.testing.assert_close(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert all(not p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training and not any(m.training for m in a.modules())
    # Kaiming fan_out std for the first conv: sqrt(2 / (64 * 9))
    assert float(a.features[0].weight.std()) == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)
    assert float(a.features[0].bias.abs().sum()) == 0.0


def test_perceptual_loss():
    torch.manual_seed(0)
    vgg = VGG16Features("random", ["relu1_2", "relu2_2"])
    loss = PerceptualLoss(vgg)
    assert loss.layer_weights == {"relu1_2": 0.5, "relu2_2": 0.5}
    target = torch.rand(2, 3, 16, 16)
    assert float(loss(target, target)) == 0.0
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_(True)
    value = loss(pred, target)
    assert float(value.detach()) > 0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    mse = PerceptualLoss(vgg, {"relu2_2": 1.0}, criterion="mse")
    f = vgg(pred.detach())["relu2_2"] - vgg(target)["relu2_2"]
    assert float(mse(pred.detach(), target)) == pytest.approx(float(f.square().mean()), rel=1e-5)
    with pytest.raises(ValueError, match="not extracted"):
        PerceptualLoss(vgg, {"relu3_3": 1.0})


def test_build_from_params(monkeypatch):
    from retina_sr.config import load_params
    from retina_sr.losses import build_perceptual_loss

    root = Path(__file__).resolve().parents[1]
    demo = load_params(root / "params.yaml").train.perceptual
    loss = build_perceptual_loss(demo)
    assert loss.vgg.layers == list(demo.vgg_layers)
    assert loss.vgg.weights_description == f"random(seed={demo.vgg_seed})"
    full = load_params(root / "params.yaml", root / "conf" / "study" / "full.yaml").train.perceptual
    assert full.vgg_weights == "imagenet"

    def offline(url, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(VGGWeightsError, match="vgg16-397923af.pth"):
        build_perceptual_loss(full)
