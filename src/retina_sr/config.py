"""The one configuration of the study: ``conf/`` composed by Hydra, validated on load.

The source is ``conf/config.yaml`` (every key, the demo study's values) plus one overlay of
``conf/study/`` (``demo``, ``real``, ``full``). Hydra composes them (:func:`compose`): DVC does it on
every ``dvc exp run`` (``.dvc/config``: ``hydra.enabled``) and writes the result to ``params.yaml``, the
file the stages read; the Snakefile composes the same way (``--config study=full``). ``params.yaml`` is
therefore generated: ``retina-sr params compose --out params.yaml`` rewrites it byte for byte as DVC does.

Every section is a pydantic model with ``extra="forbid"``, so a typo'd or unknown key, a wrong type
or an impossible value (e.g. a crop larger than the image) is a :class:`ConfigError` that names the
key (``data.patches.crop``) and what to do. Values that would pass a range check and fail late are
refused too: ``.nan``/``.inf`` in any float, ``true``/``false`` for a number, a key given twice in one
YAML mapping, an empty file. The field defaults are the demo study's values (``Params()`` equals the
demo composition, ``tests/test_config.py`` checks it), except ``evaluate.peers_dir`` (a folder of one
machine, off by default).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "ConfigError",
    "Params",
    "load_params",
    "params_from_dict",
    "compose",
    "compose_yaml",
    "load_composed",
    "flatten",
    "read_yaml",
    "levels_for_zoom",
    "parse_arch",
    "ZOOMS",
    "MAX_SEED",
    "CONF_DIR",
]

#: zoom levels the study supports (the check and its message both read this)
ZOOMS = (1, 2, 4, 8, 16)
#: seeds numpy (``np.random.seed``) and torch (``torch.manual_seed``) both accept: 0 .. 2**32-1
MAX_SEED = 2**32 - 1
#: the Hydra configuration folder (``.dvc/config``'s ``hydra.config_dir``: DVC's default)
CONF_DIR = Path("conf")


class ConfigError(ValueError):
    """A parameter file is missing, unreadable or invalid. The message names the file and key."""


def levels_for_zoom(zoom: float) -> int:
    """2x pyramid levels (the model's ``n_up``) needed for ``zoom``: the next power of two at or above it.

    >>> [levels_for_zoom(z) for z in (1, 1.5, 2, 3, 4, 8)]
    [0, 1, 1, 2, 2, 3]
    """
    if not zoom >= 1:
        raise ValueError(f"zoom {zoom} is below 1: the pyramid only enlarges")
    return max(0, math.ceil(math.log2(zoom) - 1e-9))


def parse_arch(text: str) -> tuple[int, int]:
    """``"F64D10"`` -> ``(64, 10)``: a LapSRN size as ``model.features`` / ``model.depth`` (F<features>D<depth>).

    >>> parse_arch("F16D3")
    (16, 3)
    """
    m = re.fullmatch(r"[Ff](\d+)[Dd](\d+)", text.strip())
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ValueError(f"architecture {text!r} is not F<features>D<depth> (e.g. F16D3, F64D10)")
    return int(m[1]), int(m[2])


def _annotation_types(annotation: Any) -> set[Any]:
    """Every type named in ``annotation`` (``tuple[int, int] | None`` -> tuple, int, NoneType)."""
    out = {annotation}
    for arg in get_args(annotation):
        out |= _annotation_types(arg)
    origin = get_origin(annotation)
    if origin is not None and origin is not Union:
        out.add(origin)
    return out


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(_holds_bool(v) for v in value))


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give it a name, e.g. the default in params.yaml")
    return value


def _seed_range(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{value} is out of range; numpy and torch take seeds in 0 .. {MAX_SEED} (2**32-1)")
    return value


#: a seed every library of the study accepts as given
Seed = Annotated[int, AfterValidator(_seed_range)]
#: a string that must say something (an empty experiment name or store URI fails only when a run starts)
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]


class _Section(BaseModel):
    # .nan passes every range check (comparisons with NaN are false) and .inf most of them: refuse both
    # everywhere (floats in lists and tuples included) instead of training on NaN losses.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes ``true`` as 1 for a number: ``steps: true`` would silently train one step."""
        types = _annotation_types(cls.model_fields[str(info.field_name)].annotation)
        if _holds_bool(value) and types & {int, float} and not types & {bool, Any}:
            raise ValueError("true/false is not a number; write a number (YAML reads true/false/yes/no/on/off as booleans)")
        return value


# --------------------------------------------------------------------------------------------- data
class DemoSource(_Section):
    """Offline demo data: ``skimage.data.retina()`` plus procedurally generated fundus phantoms."""

    include_skimage_retina: bool = True
    phantom_size: int = Field(768, ge=128, description="side of the generated phantoms in pixels")


class FolderSource(_Section):
    """Any local folder of fundus images (jpg/jpeg/png/tif), optional vessel masks."""

    path: str | None = Field(None, description="folder with the images (searched recursively)")
    pattern: str = Field("*", description="glob for image files inside `path` (extension filtered)")
    mask_dir: str | None = Field(None, description="folder with vessel masks (default: `path`)")
    mask_pattern: str | None = Field(
        None,
        description="vessel-mask file name for an image, '{stem}' replaced by the image's stem, "
        "e.g. '{stem}_1stHO.png' (CHASE_DB1) or '{stem}.tif' (HRF manual1)",
    )
    fov_mask_dir: str | None = Field(None, description="optional folder of FOV masks")
    fov_mask_pattern: str | None = Field(None, description="FOV-mask file name, e.g. '{stem}_mask.tif'")

    @field_validator("pattern")
    @classmethod
    def _inside_folder(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty; use '*' for every image in the folder's path")
        if PurePosixPath(v).is_absolute() or v.startswith("\\") or ".." in re.split(r"[\\/]", v):
            raise ValueError(
                f"{v!r} reaches outside the image folder; give a glob inside the folder's path, e.g. '*' or '**/*.png'"
            )
        return v

    @field_validator("mask_pattern", "fov_mask_pattern")
    @classmethod
    def _stem_template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        fix = "write the file name with the field {stem} (the image's stem) and no other, e.g. '{stem}_1stHO.png'"
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
        except ValueError as err:
            raise ValueError(f"{v!r} is not a valid file-name template ({err}); {fix}") from None
        if not fields or any(name != "stem" or spec or conv for name, spec, conv in fields):
            raise ValueError(f"{v!r} must contain exactly the field {{stem}}; {fix}")
        return v


class KaggleSource(_Section):
    """The EyePACS competition through the official ``kaggle`` package."""

    competition: str = "diabetic-retinopathy-detection"
    archive: Literal["sample", "train"] = Field(
        "sample", description="'sample' (sample.zip, 10 images) or 'train' (train.zip.001..005)"
    )
    cache_dir: str = Field("data/kaggle", description="where archives are downloaded (resumable)")
    min_free_gb: float = Field(
        80.0, ge=0, description="free disk space required before downloading the training archive"
    )


class SplitConfig(_Section):
    """Deterministic train/val/test split by patient (both eyes of one person in the same split)."""

    val: float = Field(0.125, ge=0, lt=1)
    test: float = Field(0.34, ge=0, lt=1)
    group_pattern: str | None = Field(
        r"(?:Image_)?(\d+)(?:_left|_right|L|R)",
        description="regex (full match on the image id) whose first capture group names the patient; ids "
        "that do not match are their own group. Default: EyePACS '10_left'/'10_right', CHASE_DB1 "
        "'Image_01L'/'Image_01R'. null = split by image",
    )

    @field_validator("group_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                if re.compile(v).groups < 1:
                    raise ValueError("needs a capture group, e.g. '(\\d+)_(?:left|right)'")
            except re.error as err:
                raise ValueError(f"not a valid regular expression ({err})") from None
        return v

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError("split.val + split.test must leave images for training (< 1)")
        return self


class PatchConfig(_Section):
    crop: int = Field(96, ge=16, description="side of the random HR training crops")
    per_image: int = Field(16, ge=1, description="random crops per training/validation image")
    fov_min_fraction: float = Field(0.8, ge=0, le=1, description="min share of a crop inside the FOV")
    blur_sigma: tuple[float, float] = Field(
        (0.4, 1.2), description="Gaussian blur sigma range in HR pixels, multiplied by the zoom (zoom 1: as given)"
    )
    noise_std: tuple[float, float] = Field((0.0, 0.02), description="Gaussian noise std range (0..1 scale)")
    poisson_peak: float | None = Field(None, gt=0, description="Poisson noise peak (photons at 1.0); null = off")
    jpeg_quality: tuple[int, int] | None = Field(None, description="JPEG quality range for LR inputs; null = off")
    flip: bool = True
    rot90: bool = True
    color_jitter: float = Field(0.05, ge=0, le=0.5, description="per-channel gain jitter (+-)")
    brightness_jitter: float = Field(0.1, ge=0, le=0.5, description="global brightness jitter (+-)")

    @field_validator("blur_sigma", "noise_std")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0 or v[1] < v[0]:
            raise ValueError("must be [low, high] with 0 <= low <= high")
        return v

    @field_validator("jpeg_quality")
    @classmethod
    def _jpeg(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (1 <= v[0] <= v[1] <= 100):
            raise ValueError("must be [low, high] with 1 <= low <= high <= 100")
        return v


class DataConfig(_Section):
    source: Literal["demo", "folder", "kaggle"] = "demo"
    n_images: int = Field(24, ge=3, description="images used by the study (train+val+test)")
    size: int = Field(512, ge=64, description="side of the square preprocessed images")
    scales: list[int] = Field([1, 2, 4, 8], description="zoom levels: 1 and powers of two up to 16")
    workers: int = Field(2, ge=1, description="processes for preprocessing")
    demo: DemoSource = DemoSource()
    folder: FolderSource = FolderSource()
    extra_folders: list[FolderSource] = Field(
        [], description="more folders for source 'folder', each with data.folder's keys (its own pattern and "
        "masks), pooled with data.folder: e.g. HRF and CHASE_DB1 in one study")
    kaggle: KaggleSource = KaggleSource()
    split: SplitConfig = SplitConfig()
    patches: PatchConfig = PatchConfig()

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one zoom level is needed")
        allowed = ", ".join(map(str, ZOOMS))
        for s in v:
            if s not in ZOOMS:
                raise ValueError(f"zoom {s} is not 1 or a power of two up to {ZOOMS[-1]}; use zoom levels among {allowed}")
        if len(set(v)) != len(v):
            raise ValueError("zoom levels must be unique")
        return sorted(v)

    @model_validator(mode="after")
    def _consistency(self) -> DataConfig:
        if self.patches.crop > self.size:
            raise ValueError(
                f"patches.crop ({self.patches.crop}) is larger than size ({self.size}): lower data.patches.crop or raise data.size"
            )
        big = max(self.scales)
        if self.patches.crop % big:
            raise ValueError(f"patches.crop ({self.patches.crop}) must be divisible by the largest zoom ({big})")
        if self.size % big:
            raise ValueError(f"size ({self.size}) must be divisible by the largest zoom ({big})")
        if self.source == "folder" and not self.folder.path:
            raise ValueError("source is 'folder' but folder.path is not set: set data.folder.path")
        for i, f in enumerate(self.extra_folders):
            if not f.path:
                raise ValueError(f"extra_folders[{i}].path is not set: give the folder of the images")
        return self

    @property
    def levels(self) -> int:
        """Number of 2x pyramid levels needed for the largest zoom."""
        return levels_for_zoom(max(self.scales))


# -------------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    """LapSRN (Lai et al. 2017) and its network modifications (MS-LapSRN sharing, blocks, upsamplers), or
    the ``lrhead`` (every conv at the input resolution, sub-pixel output per zoom: the fast CPU model)."""

    arch: Literal["lapsrn", "lrhead"] = Field(
        "lapsrn",
        description="'lapsrn': the Laplacian pyramid (feature convs at every level's resolution); 'lrhead': one "
        "trunk at the input resolution and a sub-pixel conv per zoom on the same bicubic image branch (Shi et al. "
        "2016's ESPCN layout; ~4x fewer operations at x4, models/lrhead.py). upsample and share_weights are "
        "LapSRN's; block, recursions, features and depth shape the lrhead's trunk",
    )
    features: int = Field(16, ge=1, description="F: channels of the feature-extraction branch")
    depth: int = Field(3, ge=1, description="D: conv layers per pyramid level (or per recursive block)")
    recursions: int = Field(1, ge=1, description="R: recursive applications of the level's block (MS-LapSRN)")
    share_weights: bool = Field(False, description="share feature/upsampling weights across levels (MS-LapSRN)")
    block: Literal["plain", "residual"] = Field("plain", description="stacked plain convs or residual blocks")
    upsample: Literal["deconv", "resize_conv", "subpixel"] = Field(
        "resize_conv", description="transposed conv (paper), resize-then-conv, or sub-pixel conv with ICNR init"
    )
    negative_slope: float = Field(0.2, ge=0, lt=1, description="LeakyReLU slope")
    image_branch: Literal["bicubic", "learned"] = Field(
        "bicubic",
        description="image branch of every 2x level: 'bicubic' (fixed Keys a=-0.75 interpolation, residual "
        "convs start at zero, so an untrained model equals cascaded bicubic) or 'learned' (the paper's "
        "upsampler of model.upsample, bilinear at init)",
    )

    direct: bool = Field(
        False,
        description="lrhead only: every zoom straight from the input grid (bicubic sx and its 3x3 refinement folded "
        "into one input-grid conv, the hold filter on the phases; only the final pixel shuffle at the output "
        "resolution: the fastest CPU graph) instead of cascaded 2x levels",
    )

    @model_validator(mode="after")
    def _arch(self) -> ModelConfig:
        if self.direct and self.arch != "lrhead":
            raise ValueError("model.direct is the lrhead's (every zoom from the input grid); LapSRN's levels are a "
                             "cascade by design: set direct: false or arch: lrhead")
        if self.arch == "lrhead":
            if self.share_weights:
                raise ValueError("model.share_weights is LapSRN's (one set of level weights); the lrhead has one "
                                 "trunk for every zoom already: set share_weights: false or arch: lapsrn")
            if self.image_branch != "bicubic":
                raise ValueError("the lrhead adds its residuals to the bicubic image branch: set "
                                 "image_branch: bicubic or arch: lapsrn")
        return self


class DiscriminatorConfig(_Section):
    features: int = Field(32, ge=4)
    n_layers: int = Field(3, ge=1, le=6, description="strided conv layers of the PatchGAN")
    spectral_norm: bool = True


# -------------------------------------------------------------------------------------------- train
class PhaseConfig(_Section):
    """What every phase sets: its budget, learning rate and pixel-side loss weights (each phase's
    section gives its own defaults: the demo study's)."""

    steps: int = Field(ge=1, description="optimisation steps of the phase")
    lr: float = Field(gt=0, description="Adam learning rate (peak of the schedule)")
    pixel_weight: float = Field(1.0, ge=0, description="Charbonnier loss summed over pyramid levels")
    ridge_weight: float = Field(
        0.0, ge=0, description="vessel-ridge loss (green-channel Hessian dark-ridge response vs HR's, "
        "losses/ridge.py) on the final output: keeps thin-vessel contrast that a pixel loss trades for PSNR")
    periodic_weight: float = Field(
        0.0, ge=0, description="periodic-artifact loss (the final output's luminance spectral magnitude above "
        "HR's at the upsampling periods 2..zoom, losses/periodic.py; none at zoom 1): keeps a learned upsampler, "
        "pushed by the ridge loss, from painting a checkerboard")


class L1Phase(PhaseConfig):
    steps: int = Field(600, ge=1)
    lr: float = Field(1e-3, gt=0)


class ModifiedPhase(PhaseConfig):
    steps: int = Field(50, ge=1)
    lr: float = Field(3e-4, gt=0)


class PerceptualPhase(PhaseConfig):
    steps: int = Field(50, ge=1)
    lr: float = Field(1e-4, gt=0)
    vgg_weights: str = Field(
        "random",
        description="'imagenet' (torchvision's published VGG16 file, hash-checked, cached), a local "
        "path to a torchvision-format state dict, or 'random' (He et al. 2016 random features)",
    )
    vgg_layers: list[Literal["relu1_2", "relu2_2", "relu3_3", "relu4_3"]] = ["relu2_2"]
    vgg_seed: Seed = Field(0, description="seed for 'random' VGG weights")
    perceptual_weight: float = Field(0.05, ge=0)
    saliency_weight: float = Field(0.5, ge=0)


class AdversarialPhase(PhaseConfig):
    steps: int = Field(50, ge=1)
    lr: float = Field(5e-5, gt=0)
    lr_d: float = Field(1e-4, gt=0, description="discriminator learning rate")
    gan_type: Literal["vanilla", "relativistic"] = "relativistic"
    adversarial_weight: float = Field(5e-3, ge=0)
    warmup_steps: int = Field(10, ge=0, description="generator steps before the adversarial term is on")
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


class VariantLoss(_Section):
    """Loss weights one variant trains with in place of the phases' own, in its catch-up and its own
    steps alike (unset: the phase's). For an architecture that needs a guard the main line does not:
    a sub-pixel upsampler has no structural defence against a checkerboard (docs/ablation.md)."""

    ridge_weight: float | None = Field(None, ge=0, description="vessel-ridge loss weight (train.<phase>.ridge_weight)")
    periodic_weight: float | None = Field(
        None, ge=0, description="periodic-artifact loss weight (train.<phase>.periodic_weight)")


class VariantConfig(_Section):
    """Architecture overrides for one network-modification variant (and, in ``loss``, the loss weights
    it trains with where they differ from the phases')."""

    arch: Literal["lapsrn", "lrhead"] | None = None
    features: int | None = Field(None, ge=1, description="this variant's F (model.features when null)")
    depth: int | None = Field(None, ge=1, description="this variant's D (model.depth when null)")
    share_weights: bool | None = None
    recursions: int | None = Field(None, ge=1)
    block: Literal["plain", "residual"] | None = None
    upsample: Literal["deconv", "resize_conv", "subpixel"] | None = None
    direct: bool | None = None
    loss: VariantLoss = Field(default_factory=VariantLoss)


class LoopConfig(_Section):
    """The training loop every phase shares (``train.loop``: one DVC/Snakemake dependency, not sixteen)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = Field(
        1, ge=1,
        description="data-parallel training processes (GPUs): > 1 runs the train stages under "
        "'torchrun --standalone --nproc-per-node <devices>' with DDP (NCCL on CUDA, gloo on CPU); batch_size "
        "stays the global batch and must be divisible by devices",
    )
    batch_size: int = Field(8, ge=1)
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    ema_decay: float | None = Field(0.99, ge=0, lt=1, description="EMA of the weights; null = off")
    val_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    charbonnier_eps: float = Field(1e-3, gt=0)
    lr_schedule: Literal["cosine", "step"] = Field(
        "cosine",
        description="per-phase learning-rate schedule: 'cosine' anneals lr to lr/100 over the phase's steps "
        "(Loshchilov & Hutter 2017); 'step' halves it after every quarter of the steps (LapSRN-style)",
    )
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (generator and discriminator); null = off")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up at the start of every phase")
    degradation: Literal["online", "stored"] = Field(
        "online",
        description="'online': every step draws a fresh dihedral transform and a fresh blur/noise/JPEG "
        "realisation of data.patches' ranges for the stored HR crops; 'stored': the fixed lr_x{s} arrays "
        "of the patches file (one realisation per crop)",
    )
    degrade_on: Literal["auto", "host", "device"] = Field(
        "auto",
        description="where 'online' degradation runs: 'host' (OpenCV, a loop over the batch, the patches "
        "stage's own degrade), 'device' (the same model as batched torch ops where the model trains, with the "
        "HR crops kept on the GPU when they fit; only the noise realisation differs; no JPEG), 'auto' "
        "(device on CUDA unless data.patches.jpeg_quality is set, else host)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the generator for training (one graph per zoom; worth it on a GPU for "
        "long runs, the first steps compile)",
    )
    max_val_patches: int = Field(32, ge=1, description="validation patches used per zoom")
    zoom_cycle: list[int] | None = Field(
        None, min_length=1,
        description="the zooms the training steps cycle through, in order (null = data.scales, each once); a zoom "
        "listed twice trains twice as often, one left out trains only as a lower level of a larger zoom's pyramid "
        "loss (no ridge or periodic term there) or, above the largest listed, not at all (docs/ablation.md: x4 "
        "alone gains at x4 and x8 and loses x2's vessel gain)",
    )


class TrainConfig(_Section):
    """``loop`` (shared) and one section per phase of :data:`retina_sr.phases.PHASES`, plus the
    architecture ``variants`` the variant phase trains (one stage each)."""

    loop: LoopConfig = LoopConfig()
    l1: L1Phase = L1Phase()
    perceptual: PerceptualPhase = PerceptualPhase()
    adversarial: AdversarialPhase = AdversarialPhase()
    modified: ModifiedPhase = ModifiedPhase()
    variants: dict[str, VariantConfig] = Field(
        default_factory=lambda: {
            "shared": VariantConfig(share_weights=True, recursions=2),
            "resblock": VariantConfig(block="residual"),
            "subpixel": VariantConfig(upsample="subpixel"),
        },
        description="architecture overrides of model, one train_modified@<name> stage each",
    )

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        if not v:
            raise ValueError("at least one variant is needed")
        for name in v:
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ValueError(f"variant name {name!r} must match [a-z0-9_]+ (it becomes a path and stage name)")
        return v


# ----------------------------------------------------------------------------------------- evaluate
class EvaluateConfig(_Section):
    max_images: int | None = Field(None, ge=1, description="cap on test images (null = all)")
    baselines: list[Literal["nearest", "bicubic", "lanczos"]] = ["nearest", "bicubic", "lanczos"]
    speed_repeats: int = Field(3, ge=1, description="timed runs per model and zoom (after warm-up)")
    figure_images: int = Field(2, ge=0, description="test images that get side-by-side panels")
    vessel_threshold: float | None = Field(None, description="fixed vesselness threshold; null = Otsu per HR image")
    fast_path: bool = Field(
        False,
        description="also score each model's fast path (CUDA: bf16+compile; CPU: ONNX Runtime) as its own row "
        "'<model> (<mode>)', with its uint8-in/uint8-out speed; off = the eager fp32 rows only (on CPU it "
        "costs an ONNX export per model and zoom, ~10 s each: +~5 min on the demo study)",
    )
    peers_dir: str | None = Field(
        None,
        description="folder of OpenCV dnn_superres .pb files (LapSRN/ESPCN/FSRCNN_x2/x4.pb): the peers a user "
        "would pick instead, evaluated as rows at x2/x4 (null = off; an absent folder is skipped with the reason)",
    )


# ------------------------------------------------------------------------------------------- mlflow
class MlflowConfig(_Section):
    experiment: NonEmptyStr = "retina-sr"
    evaluation_experiment: NonEmptyStr = "evaluation"
    tracking_uri: NonEmptyStr = Field(
        "sqlite:///mlflow.db", description="default store; the MLFLOW_TRACKING_URI environment variable wins"
    )
    registered_model: NonEmptyStr = Field(
        "retina-sr", description="model-registry name: every training stage registers its model.pt as a new "
        "version (tags phase, variant, study), so `--model models:/retina-sr/<version>` works")


# ------------------------------------------------------------------------------------------- params
class Params(_Section):
    study: Literal["demo", "real", "full"] = Field(
        "demo", description="which parameter set this is (recorded in runs): demo, real (HRF + CHASE_DB1 folder "
        "study, conf/study/real.yaml) or full (Kaggle EyePACS)")
    seed: Seed = Field(42, description="seeds Python, numpy and torch (0 .. 2**32-1)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="after")
    def _zoom_cycle_within_scales(self) -> Params:
        cyc, scales = self.train.loop.zoom_cycle, self.data.scales
        if cyc is not None and set(cyc) - set(scales):
            raise ValueError(f"train.loop.zoom_cycle {cyc} may only use zooms of data.scales {scales}: remove "
                             f"{sorted(set(cyc) - set(scales))} or add them to data.scales")
        return self

    @model_validator(mode="after")
    def _discriminator_fits_crop(self) -> Params:
        d = self.train.adversarial.discriminator
        need = 3 * 2**d.n_layers  # the PatchGAN's smallest input that still gives an output map
        if self.data.patches.crop < need:
            raise ValueError(
                f"data.patches.crop ({self.data.patches.crop}) is smaller than the discriminator's smallest input "
                f"({need} px for train.adversarial.discriminator.n_layers={d.n_layers}): raise the crop or lower n_layers"
            )
        return self

    def value(self, key: str) -> Any:
        """The JSON value at a dotted key (``seed``, ``train.loop``, ``train.variants.shared``)."""
        value: Any = self.model_dump(mode="json")
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"no parameter {key!r} (at {part!r})")
            value = value[part]
        return value

    def digest(self) -> str:
        """A short stable hash of the whole configuration."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


#: what to do, for pydantic's own error types (our validators say it themselves)
_HINTS = {
    "finite_number": "; write a finite number (.nan and .inf are not accepted)",
}


def _format_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<file>: <key>: <what is wrong> (got ...)[; <what to do>]``."""
    lines = []
    for e in err.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?) - remove it or check the README's list of keys"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "value_error") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {key}: {msg}{shown}{_HINTS.get(e['type'], '')}")
    return "\n".join(lines)


def params_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first}); keep one of them")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding keys is legitimate
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file strictly (duplicate keys refused); errors are one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found: run from the repository root or pass --params")
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}not valid YAML ({err.problem or err.context}); fix the syntax there") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({err}); fix the file") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if data is None:  # empty, comments only, `---` or `null`: all defaults would be a silent surprise
        raise ConfigError(f"{path} is empty; write the parameters into it (start from params.yaml) or pass another file")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}; write `key: value` lines as in params.yaml"
        )
    return data


def load_params(path: str | Path = "params.yaml", *overrides: str | Path) -> Params:
    """Load and validate ``path``; each override file is merged on top (OmegaConf's merge: mappings
    merge key by key, anything else replaces)."""
    path = Path(path)
    raw = _read_yaml(path)
    sources = [str(path)]
    if overrides:
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        layers = [raw, *(_read_yaml(Path(o)) for o in overrides)]
        sources += [str(o) for o in overrides]
        for o, layer in zip(overrides, layers[1:]):
            if isinstance(layer, dict) and "defaults" in layer:  # a conf/study overlay: its defaults list is Hydra's
                study = Path(o).stem
                raise ConfigError(f"{o} has a Hydra defaults list (it picks other config groups), so it is not a plain "
                                  f"override file: validate its composition with `retina-sr params compose --study "
                                  f"{study} --out /tmp/{study}.yaml` and `retina-sr params validate /tmp/{study}.yaml`")
        try:
            merged = OmegaConf.merge(*(OmegaConf.create(x) for x in layers))
            raw = OmegaConf.to_container(merged)  # type: ignore[assignment]
        except OmegaConfBaseException as err:
            raise ConfigError(f"{' + '.join(sources)}: cannot merge ({_one_line(err)})") from None
    return params_from_dict(raw, " + ".join(sources))


# ------------------------------------------------------------------------------------ composition
def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _compose(overrides: Sequence[str], conf_dir: str | Path) -> DictConfig:
    """Hydra's composition of ``conf_dir/config.yaml`` with ``overrides`` (Hydra's override grammar:
    ``study=full``, ``train.l1.steps=5``), exactly as DVC's ``dvc exp run -S`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = Path(conf_dir).resolve()
    if not (conf / "config.yaml").is_file():
        raise ConfigError(f"{conf_dir}/config.yaml not found: run from the repository root (it holds conf/)")
    try:
        with initialize_config_dir(str(conf), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        shown = " ".join(overrides) or "no overrides"
        raise ConfigError(f"{conf_dir} ({shown}): {_one_line(err)}") from None
    return cfg


def compose(overrides: Sequence[str] = (), conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """The composed parameters as a plain dict (not validated: see :func:`load_composed`)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(_compose(overrides, conf_dir))  # type: ignore[return-value]


def compose_yaml(overrides: Sequence[str] = (), conf_dir: str | Path = CONF_DIR) -> str:
    """The composed parameters as the YAML text DVC writes into ``params.yaml`` (byte for byte)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(_compose(overrides, conf_dir))


def load_composed(overrides: Sequence[str] = (), conf_dir: str | Path = CONF_DIR) -> Params:
    """Compose ``conf_dir`` with ``overrides`` and validate the result."""
    shown = " ".join(overrides)
    return params_from_dict(compose(overrides, conf_dir), f"{conf_dir}/config.yaml" + (f" + {shown}" if shown else ""))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
