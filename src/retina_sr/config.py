"""The one configuration of the study: ``params.yaml``, validated on load.

Every section is a pydantic model with ``extra="forbid"``, so a typo'd or unknown key, a wrong type
or an impossible value (e.g. a crop larger than the image) is a :class:`ConfigError` that names the
key (``data.patches.crop``) and what to do. Both orchestrators (DVC and Snakemake) and every
``workflow/scripts/*.py`` load the parameters through :func:`load_params`.

Two parameter sets exist: the default ``params.yaml`` (``study: demo``, the offline demo study that
runs in minutes on 2 CPU cores) and the full study (``conf/study/full.yaml`` merged on top: Kaggle
EyePACS, 1000 images, paper-size LapSRN, ImageNet VGG16). See the README for the one command each
orchestrator uses to select it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "Params",
    "load_params",
    "params_from_dict",
    "deep_merge",
    "flatten",
]


class ConfigError(ValueError):
    """A parameter file is missing, unreadable or invalid. The message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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

    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
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
    crop: int = Field(128, ge=16, description="side of the random HR training crops")
    per_image: int = Field(32, ge=1, description="random crops per training/validation image")
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
    n_images: int = Field(16, ge=3, description="images used by the study (train+val+test)")
    size: int = Field(512, ge=64, description="side of the square preprocessed images")
    scales: list[int] = Field([1, 2, 4, 8], description="zoom levels: 1 and powers of two")
    workers: int = Field(2, ge=1, description="processes for preprocessing")
    demo: DemoSource = DemoSource()
    folder: FolderSource = FolderSource()
    kaggle: KaggleSource = KaggleSource()
    split: SplitConfig = SplitConfig()
    patches: PatchConfig = PatchConfig()

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one zoom level is needed")
        for s in v:
            if s < 1 or (s & (s - 1)) != 0:
                raise ValueError(f"zoom {s} is not 1 or a power of two (allowed: 1, 2, 4, 8, 16)")
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
        return self

    @property
    def levels(self) -> int:
        """Number of 2x pyramid levels needed for the largest zoom."""
        return int(math.log2(max(self.scales)))


# -------------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    """LapSRN (Lai et al. 2017) and its network modifications (MS-LapSRN sharing, blocks, upsamplers)."""

    features: int = Field(16, ge=1, description="F: channels of the feature-extraction branch")
    depth: int = Field(3, ge=1, description="D: conv layers per pyramid level (or per recursive block)")
    recursions: int = Field(1, ge=1, description="R: recursive applications of the level's block (MS-LapSRN)")
    share_weights: bool = Field(False, description="share feature/upsampling weights across levels (MS-LapSRN)")
    block: Literal["plain", "residual"] = Field("plain", description="stacked plain convs or residual blocks")
    upsample: Literal["deconv", "resize_conv", "subpixel"] = Field(
        "deconv", description="transposed conv (paper), resize-then-conv, or sub-pixel conv with ICNR init"
    )
    negative_slope: float = Field(0.2, ge=0, lt=1, description="LeakyReLU slope")


class DiscriminatorConfig(_Section):
    features: int = Field(32, ge=4)
    n_layers: int = Field(3, ge=1, le=6, description="strided conv layers of the PatchGAN")
    spectral_norm: bool = True


# -------------------------------------------------------------------------------------------- train
class PhaseConfig(_Section):
    steps: int = Field(200, ge=1)
    lr: float = Field(2e-4, gt=0)
    pixel_weight: float = Field(1.0, ge=0, description="Charbonnier loss summed over pyramid levels")


class PerceptualPhase(PhaseConfig):
    vgg_weights: str = Field(
        "random",
        description="'imagenet' (torchvision's published VGG16 file, hash-checked, cached), a local "
        "path to a torchvision-format state dict, or 'random' (He et al. 2016 random features)",
    )
    vgg_layers: list[Literal["relu1_2", "relu2_2", "relu3_3", "relu4_3"]] = ["relu2_2", "relu3_3"]
    vgg_seed: int = Field(0, description="seed for 'random' VGG weights")
    perceptual_weight: float = Field(0.05, ge=0)
    saliency_weight: float = Field(0.5, ge=0)


class AdversarialPhase(PhaseConfig):
    lr_d: float = Field(1e-4, gt=0, description="discriminator learning rate")
    gan_type: Literal["vanilla", "relativistic"] = "relativistic"
    adversarial_weight: float = Field(5e-3, ge=0)
    warmup_steps: int = Field(20, ge=0, description="generator steps before the adversarial term is on")
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


class VariantConfig(_Section):
    """Architecture overrides for one network-modification variant."""

    share_weights: bool | None = None
    recursions: int | None = Field(None, ge=1)
    block: Literal["plain", "residual"] | None = None
    upsample: Literal["deconv", "resize_conv", "subpixel"] | None = None


class ModifiedPhase(PhaseConfig):
    variants: dict[str, VariantConfig] = Field(
        default_factory=lambda: {
            "shared": VariantConfig(share_weights=True, recursions=2),
            "resblock": VariantConfig(block="residual"),
            "subpixel": VariantConfig(upsample="subpixel"),
        }
    )

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        import re

        if not v:
            raise ValueError("at least one variant is needed")
        for name in v:
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ValueError(f"variant name {name!r} must match [a-z0-9_]+ (it becomes a path and stage name)")
        return v


class TrainConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1)
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    ema_decay: float | None = Field(0.999, ge=0, lt=1, description="EMA of the weights; null = off")
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
    max_val_patches: int = Field(64, ge=1, description="validation patches used per zoom")
    l1: PhaseConfig = PhaseConfig(steps=300, lr=2e-4)
    perceptual: PerceptualPhase = PerceptualPhase(steps=150, lr=1e-4)
    adversarial: AdversarialPhase = AdversarialPhase(steps=150, lr=5e-5)
    modified: ModifiedPhase = ModifiedPhase(steps=150, lr=1e-4)


# ----------------------------------------------------------------------------------------- evaluate
class EvaluateConfig(_Section):
    max_images: int | None = Field(None, ge=1, description="cap on test images (null = all)")
    baselines: list[Literal["nearest", "bicubic", "lanczos"]] = ["nearest", "bicubic", "lanczos"]
    speed_repeats: int = Field(5, ge=1, description="timed runs per model and zoom (after warm-up)")
    figure_images: int = Field(2, ge=0, description="test images that get side-by-side panels")
    vessel_threshold: float | None = Field(None, description="fixed vesselness threshold; null = Otsu per HR image")


# ------------------------------------------------------------------------------------------- mlflow
class MlflowConfig(_Section):
    experiment: str = "retina-sr"
    evaluation_experiment: str = "evaluation"
    tracking_uri: str = Field(
        "sqlite:///mlflow.db", description="default store; the MLFLOW_TRACKING_URI environment variable wins"
    )


# ------------------------------------------------------------------------------------------- params
class Params(_Section):
    study: Literal["demo", "full"] = Field("demo", description="which parameter set this is (recorded in runs)")
    seed: int = 42
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()

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

    def digest(self) -> str:
        """A short stable hash of the whole configuration."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?) - remove it or check the README's list of keys"
        got = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def params_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found: run from the repository root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def load_params(path: str | Path = "params.yaml", *overrides: str | Path) -> Params:
    """Load and validate ``path``; each override file is deep-merged on top (like ``--configfile``)."""
    path = Path(path)
    raw = _read_yaml(path)
    sources = [str(path)]
    for o in overrides:
        raw = deep_merge(raw, _read_yaml(Path(o)))
        sources.append(str(o))
    return params_from_dict(raw, " + ".join(sources))


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
