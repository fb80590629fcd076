"""The loss set of each training phase.

======================  =====================================================================
phase                   generator loss
======================  =====================================================================
``l1``                  ``pixel_weight * pyramid_charbonnier`` (Lai et al. 2017, Eq. 2): every
                        returned pyramid level vs the HR patch area-downscaled to its size.
``perceptual``          pixel term + ``perceptual_weight * VGG16 perceptual`` (Johnson et al.
                        2016) + ``saliency_weight * saliency-weighted Charbonnier`` (Mahapatra et
                        al. 2017), both on the final (HR-size) output, with ``train.perceptual.*``.
``adversarial``         the perceptual phase's terms (kept, with ``train.perceptual``'s weights and
                        VGG, as SRGAN/ESRGAN keep content losses next to the adversarial one) +
                        ``adversarial_weight * GAN generator loss`` (``train.adversarial.gan_type``)
                        after ``warmup_steps`` steps; the discriminator is trained from step 0 so
                        it is not random when the adversarial term switches on.
``modified``            the adversarial phase's loss set (``train.adversarial``'s GAN settings and
                        ``train.perceptual``'s content weights), pixel weight of
                        ``train.modified``; a fresh discriminator with the same warm-up.
======================  =====================================================================

The saliency term uses the patch's field-of-view mask (``fov`` in the patches file) so that the
FOV border does not dominate the saliency map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import phases
from ..config import AdversarialPhase, Params, PerceptualPhase, PhaseConfig

__all__ = ["PhaseLosses", "LossSpec", "loss_spec", "loss_overrides"]


@dataclass(frozen=True)
class LossSpec:
    """Which terms a phase uses and their settings (see the module table)."""

    pixel_weight: float
    charbonnier_eps: float
    ridge_weight: float = 0.0
    periodic_weight: float = 0.0
    perceptual: PerceptualPhase | None = None
    adversarial: AdversarialPhase | None = None

    @property
    def uses_fov(self) -> bool:
        """Only the saliency term reads the FOV mask: other phases need not copy it to the device."""
        return self.perceptual is not None and self.perceptual.saliency_weight > 0


def loss_spec(params: Params, phase: str, variant: str | None = None) -> LossSpec:
    """The :class:`LossSpec` of ``phase``: its own pixel-side weights plus the terms of the sections its
    :class:`~retina_sr.phases.Phase` lists in ``losses`` (``perceptual``, ``adversarial``). With
    ``variant``, the weights that ``train.variants.<variant>.loss`` sets replace the phase's (a variant's
    catch-up on ``l1`` and its own steps both train with them)."""
    p = phases.get(phase)
    t = params.train
    cfg: PhaseConfig = getattr(t, p.name)
    w = {"ridge_weight": cfg.ridge_weight, "periodic_weight": cfg.periodic_weight, **loss_overrides(params, variant)}
    return LossSpec(cfg.pixel_weight, t.loop.charbonnier_eps, w["ridge_weight"], w["periodic_weight"],
                    perceptual=t.perceptual if "perceptual" in p.losses else None,
                    adversarial=t.adversarial if "adversarial" in p.losses else None)


def loss_overrides(params: Params, variant: str | None) -> dict[str, float]:
    """The loss weights ``train.variants.<variant>.loss`` sets (``{}`` for the main line, ``variant=None``)."""
    if variant is None:
        return {}
    if variant not in params.train.variants:
        raise ValueError(f"variant {variant!r} is not in {phases.VARIANTS_KEY} (have {sorted(params.train.variants)})")
    return params.train.variants[variant].loss.model_dump(exclude_none=True)


class PhaseLosses(nn.Module):
    """Generator and discriminator losses of one phase; every call returns ``(total, terms)``.

    ``terms`` maps term names (``pixel``, ``perceptual``, ``saliency``, ``adv_g``, ``d``) to detached
    floats-as-tensors for logging; ``loss`` is the weighted total.
    """

    def __init__(self, spec: LossSpec) -> None:
        super().__init__()
        from ..losses import PerceptualLoss, SaliencyLoss, VGG16Features

        self.spec = spec
        self.ridge: nn.Module | None = None
        if spec.ridge_weight > 0:
            from ..losses.ridge import RidgeLoss

            self.ridge = RidgeLoss(eps=spec.charbonnier_eps)
        self.periodic: nn.Module | None = None
        if spec.periodic_weight > 0:
            from ..losses.periodic import PeriodicLoss

            self.periodic = PeriodicLoss()
        self.perceptual: nn.Module | None = None
        self.saliency: nn.Module | None = None
        self.vgg_description = "none"
        p = spec.perceptual
        if p is not None:
            if p.perceptual_weight > 0:
                vgg = VGG16Features(p.vgg_weights, p.vgg_layers, seed=p.vgg_seed)
                self.vgg_description = vgg.weights_description
                self.perceptual = PerceptualLoss(vgg)
            if p.saliency_weight > 0:
                self.saliency = SaliencyLoss("weighted", eps=spec.charbonnier_eps)

    @property
    def adversarial(self) -> bool:
        return self.spec.adversarial is not None

    def generator(self, outputs: list[Tensor], hr: Tensor, fov: Tensor | None = None,
                  disc: nn.Module | None = None, step: int = 0,
                  d_real: Tensor | None = None, zoom: int = 2) -> tuple[Tensor, dict[str, Tensor]]:
        """Generator loss for the pyramid ``outputs`` of one batch against ``hr`` (fp32 losses).

        ``step`` counts the phase's own steps (the adversarial warm-up); ``d_real``: the discriminator's
        logits of ``hr`` when the caller already has them (the trainer's one real pass per step), else
        the relativistic loss computes them; ``zoom``: the step's zoom (the periodic term's artifact periods)."""
        from ..losses import generator_adversarial_loss, pyramid_charbonnier

        s = self.spec
        outputs = [o.float() for o in outputs]
        final = outputs[-1]
        terms: dict[str, Tensor] = {}
        total = hr.new_zeros(())
        if s.pixel_weight > 0:
            terms["pixel"] = pyramid_charbonnier(outputs, hr, s.charbonnier_eps)
            total = total + s.pixel_weight * terms["pixel"]
        if self.ridge is not None:
            terms["ridge"] = self.ridge(final, hr)
            total = total + s.ridge_weight * terms["ridge"]
        if self.periodic is not None:
            terms["periodic"] = self.periodic(final, hr, zoom)
            total = total + s.periodic_weight * terms["periodic"]
        p = s.perceptual  # the perceptual/saliency modules exist only when it is set
        if self.perceptual is not None and p is not None:
            terms["perceptual"] = self.perceptual(final, hr)
            total = total + p.perceptual_weight * terms["perceptual"]
        if self.saliency is not None and p is not None:
            mask = None if fov is None else fov[:, None].to(hr.dtype)
            terms["saliency"] = self.saliency(final, hr, mask)
            total = total + p.saliency_weight * terms["saliency"]
        a = s.adversarial
        if a is not None:
            if disc is None:
                raise ValueError("the adversarial loss set needs the discriminator")
            if step >= a.warmup_steps and a.adversarial_weight > 0:
                d_fake = disc(final).float()
                if a.gan_type != "relativistic":
                    d_real = None
                elif d_real is None:
                    d_real = disc(hr).float()
                terms["adv_g"] = generator_adversarial_loss(d_fake, d_real, a.gan_type)
                total = total + a.adversarial_weight * terms["adv_g"]
            else:
                terms["adv_g"] = hr.new_zeros(())
        terms["loss"] = total
        return total, {k: v.detach() for k, v in terms.items()}

    def discriminator(self, fake: Tensor, hr: Tensor, disc: nn.Module,
                      d_real: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Discriminator loss on real ``hr`` vs generated ``fake`` (detached from the generator);
        ``d_real``: ``disc(hr)`` with its graph when the caller ran it already (one real pass per step)."""
        from ..losses import discriminator_loss

        a = self.spec.adversarial
        if a is None:
            raise ValueError("this phase has no discriminator")
        d_real = disc(hr).float() if d_real is None else d_real
        d_fake = disc(fake.detach()).float()
        loss = discriminator_loss(d_real, d_fake, a.gan_type)
        with torch.no_grad():
            acc = 0.5 * ((d_real > d_fake.mean()).float().mean() + (d_fake < d_real.mean()).float().mean())
        return loss, {"d": loss.detach(), "d_acc": acc}
