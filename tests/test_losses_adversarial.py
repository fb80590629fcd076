"""Vanilla and relativistic-average adversarial losses; one GAN step updates both networks."""

from __future__ import annotations

import math

import pytest
import torch

from retina_sr.config import DiscriminatorConfig, ModelConfig
from retina_sr.losses import discriminator_loss, generator_adversarial_loss, pyramid_charbonnier
from retina_sr.models import Discriminator, build_model

torch.set_num_threads(1)


def test_vanilla_values():
    z = torch.zeros(4, 1, 3, 3)
    assert float(generator_adversarial_loss(z, gan_type="vanilla")) == pytest.approx(math.log(2))
    assert float(discriminator_loss(z, z, "vanilla")) == pytest.approx(math.log(2))
    # a discriminator that is right gets a small loss, the fooled generator a large one
    real, fake = torch.full((2, 1, 2, 2), 5.0), torch.full((2, 1, 2, 2), -5.0)
    assert float(discriminator_loss(real, fake, "vanilla")) < 0.01
    assert float(generator_adversarial_loss(fake, gan_type="vanilla")) > 4.9


def test_relativistic_values_and_symmetry():
    real, fake = torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), -1.0)
    # D_Ra(real, fake) = sigmoid(2): D loss = -log sigmoid(2) (both terms equal)
    assert float(discriminator_loss(real, fake, "relativistic")) == pytest.approx(-math.log(1 / (1 + math.exp(-2))))
    # the generator whose fakes are judged less real than the reals pays -log sigmoid(-2)
    assert float(generator_adversarial_loss(fake, real, "relativistic")) == pytest.approx(-math.log(1 / (1 + math.exp(2))))
    # the generator loss mirrors the discriminator's: with fakes and reals swapped they agree
    assert float(generator_adversarial_loss(real, fake, "relativistic")) == pytest.approx(
        float(discriminator_loss(real, fake, "relativistic")))
    # only differences matter: shifting all logits changes nothing
    assert float(discriminator_loss(real + 3, fake + 3, "relativistic")) == pytest.approx(
        float(discriminator_loss(real, fake, "relativistic")))


def test_errors():
    z = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="needs d_real"):
        generator_adversarial_loss(z, None, "relativistic")
    with pytest.raises(ValueError, match="unknown gan_type"):
        discriminator_loss(z, z, "wgan")  # type: ignore[arg-type]


def test_generator_loss_does_not_reach_real_branch():
    real = torch.zeros(1, 1, 2, 2, requires_grad=True)
    fake = torch.ones(1, 1, 2, 2, requires_grad=True)
    generator_adversarial_loss(fake, real, "relativistic").backward()
    assert real.grad is None and fake.grad is not None


@pytest.mark.parametrize("gan_type", ["vanilla", "relativistic"])
def test_gan_step_updates_both_networks(gan_type):
    torch.manual_seed(0)
    gen = build_model(ModelConfig(features=4, depth=1, image_branch="learned"), levels=1)  # every weight gets a gradient at step 1
    disc = Discriminator(DiscriminatorConfig(features=4, n_layers=2, spectral_norm=True))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    hr = torch.rand(2, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    g_before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    d_before = {n: p.detach().clone() for n, p in disc.named_parameters()}

    # discriminator step on detached fakes
    fake = gen(lr)[-1]
    loss_d = discriminator_loss(disc(hr), disc(fake.detach()), gan_type)
    opt_d.zero_grad()
    loss_d.backward()
    assert all(p.grad is None for p in gen.parameters())  # D step does not touch G
    opt_d.step()

    # generator step: pixel + adversarial
    fake = gen(lr)[-1]
    d_real = disc(hr).detach() if gan_type == "relativistic" else None
    loss_g = pyramid_charbonnier(gen(lr), hr) + 0.1 * generator_adversarial_loss(disc(fake), d_real, gan_type)
    opt_g.zero_grad()
    disc.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()

    for n, p in gen.named_parameters():
        assert not torch.equal(p.detach(), g_before[n]), f"generator parameter {n} did not change"
    for n, p in disc.named_parameters():
        assert not torch.equal(p.detach(), d_before[n]), f"discriminator parameter {n} did not change"
