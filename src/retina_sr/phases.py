"""The training phases of the study: the one table every other place derives from.

``l1 -> perceptual -> adversarial -> modified@<variant>`` (Lai et al. 2017 for the pixel phase; the
loss set of each phase is in :mod:`retina_sr.training.objectives`). Each :class:`Phase` says where it
starts, which ``train.*`` sections its stage reads, and how it is named: the DVC stage and Snakemake
rule (``train_<name>``, ``train_<name>@<variant>``), its output folder (:func:`retina_sr.paths.phase_dir`),
the MLflow run. ``dvc.yaml`` and ``Snakefile`` are checked against this table by
``tests/test_orchestration.py``.

Pure data and standard library only: ``paths``, ``evaluation`` and ``training`` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Phase", "PHASES", "NAMES", "MAIN_LINE", "VARIANTS_KEY", "STAGE_KEYS", "get", "stage_name",
           "stage_params", "model_names"]


@dataclass(frozen=True)
class Phase:
    """One training phase.

    ``losses``: other ``train.*`` sections whose loss terms this phase adds to its own pixel term
    (``perceptual``: VGG + saliency; ``adversarial``: the GAN term and its discriminator).
    ``partial_init``: start from the tensors of ``previous``'s model whose name and shape match (a
    modified architecture), the rest from initialisation. ``catch_up``: with partial initialisation,
    first run ``train.<catch_up>.steps`` pixel-only steps, so a variant is compared with the main line at
    an equal training budget. ``variants``: one stage per entry of :data:`VARIANTS_KEY`.
    """

    name: str
    previous: str | None = None
    losses: tuple[str, ...] = ()
    partial_init: bool = False
    catch_up: str | None = None
    variants: bool = False

    @property
    def sections(self) -> tuple[str, ...]:
        """The ``train.<section>``s the stage reads: its loss sections, the catch-up budget, its own."""
        extra = (self.catch_up,) if self.catch_up else ()
        return tuple(dict.fromkeys((*self.losses, *extra, self.name)))


PHASES: tuple[Phase, ...] = (
    Phase("l1"),
    Phase("perceptual", previous="l1", losses=("perceptual",)),
    Phase("adversarial", previous="perceptual", losses=("perceptual", "adversarial")),
    Phase("modified", previous="adversarial", losses=("perceptual", "adversarial"), partial_init=True,
          catch_up="l1", variants=True),
)
#: phase names in chain order (``--phase`` choices)
NAMES: tuple[str, ...] = tuple(p.name for p in PHASES)
#: the phases trained once (no variants), in chain order: the study's main line of models
MAIN_LINE: tuple[str, ...] = tuple(p.name for p in PHASES if not p.variants)
#: the parameter key holding the architecture variants of the variant phase
VARIANTS_KEY = "train.variants"
#: parameters every training stage reads, besides its ``train.<section>``s (``data.patches``: the
#: online degradation draws from its ranges; ``study``: recorded in the checkpoint and the registry)
STAGE_KEYS: tuple[str, ...] = ("seed", "study", "data.scales", "data.patches", "model", "train.loop")

_BY_NAME = {p.name: p for p in PHASES}


def get(name: str) -> Phase:
    """The :class:`Phase` called ``name``; an unknown name is a ``ValueError`` listing the phases."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown phase {name!r}: use one of {', '.join(NAMES)}") from None


def stage_name(phase: str, variant: str | None = None) -> str:
    """``train_l1`` ... ``train_modified@shared``: the DVC stage (and, without ``@``, Snakemake rule)."""
    return f"train_{get(phase).name}" + (f"@{variant}" if variant else "")


def stage_params(phase: str, variant: str | None = None) -> list[str]:
    """The parameter keys the stage of ``phase`` (and ``variant``) depends on, as ``dvc.yaml`` lists them."""
    p = get(phase)
    keys = [*STAGE_KEYS, *(f"train.{s}" for s in p.sections)]
    if p.variants and variant:
        keys.append(f"{VARIANTS_KEY}.{variant}")
    return keys


def model_names(variants: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Report names of the study's models: the main line, then ``<phase>_<variant>`` per variant."""
    return [*MAIN_LINE, *(f"{p.name}_{v}" for p in PHASES if p.variants for v in sorted(variants))]
