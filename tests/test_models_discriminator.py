"""PatchGAN discriminator."""

from __future__ import annotations

import pytest
import torch

from retina_sr.config import DiscriminatorConfig
from retina_sr.models import Discriminator

torch.set_num_threads(1)


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("sn", [True, False])
def test_patchgan_logit_map(n_layers, sn):
    d = Discriminator(DiscriminatorConfig(features=4, n_layers=n_layers, spectral_norm=sn))
    x = torch.rand(2, 3, 64, 64)
    y = d(x)
    side = 64 // 2**n_layers - 2  # two stride-1 4x4 convs with padding 1 each remove one pixel
    assert y.shape == (2, 1, side, side)
    y.mean().backward()
    params = list(d.parameters())
    assert params and all(p.grad is not None for p in params)
    has_sn = any("parametrizations" in n for n, _ in d.named_parameters())
    assert has_sn == sn


def test_channels_capped_at_8f():
    d = Discriminator(DiscriminatorConfig(features=4, n_layers=6, spectral_norm=False))
    widths = [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) == 32 and widths[-1] == 1
    assert d(torch.rand(1, 3, 256, 256)).shape[1] == 1


def test_spectral_norm_bounds_layer_gain():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(features=8, n_layers=2, spectral_norm=True))
    for _ in range(20):  # power iterations converge in train mode
        d(torch.rand(1, 3, 32, 32))
    d.eval()
    conv = d.body[0]
    with torch.no_grad():
        w = conv.weight.reshape(conv.weight.shape[0], -1)
        assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_too_small_input_is_a_clear_error(n_layers):
    """Crops smaller than 3 * 2**n_layers leave no logit; that is an error naming the two keys, and
    exactly min_size works (e.g. the allowed crop 16 with the default n_layers 3 is too small)."""
    d = Discriminator(DiscriminatorConfig(features=4, n_layers=n_layers, spectral_norm=False))
    assert d.min_size == 3 * 2**n_layers
    assert d(torch.rand(1, 3, d.min_size, d.min_size)).shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match=r"data\.patches\.crop.*n_layers"):
        d(torch.rand(1, 3, d.min_size - 1, d.min_size + 8))
