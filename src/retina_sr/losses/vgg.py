"""VGG16 feature extractor built in plain torch (no torchvision) and the perceptual loss.

The module layout reproduces torchvision's ``vgg16().features`` exactly (``features.0.weight`` ...
``features.28.bias``), so torchvision's published ImageNet file ``vgg16-397923af.pth`` or any
torchvision-format state dict loads into it; ``classifier.*`` keys are ignored.

Weights (``PerceptualPhase.vgg_weights``):

- ``imagenet``: torchvision's file (Simonyan & Zisserman, ICLR 2015) fetched with
  ``torch.hub.load_state_dict_from_url(..., check_hash=True)`` and cached in torch hub's
  ``checkpoints`` directory. Offline without a cached copy is an error explaining where to put it.
- a local path to a torchvision-format state dict (features only or the full model).
- ``random``: seeded Kaiming-normal init as torchvision does (``fan_out``, ReLU, zero bias).
  He, Wang, Hopcroft, "A Powerful Generative Model Using Random Weights for the Deep Image
  Representation", NeurIPS 2016: features of random-weight VGG still act as an image
  representation (texture/style), so a perceptual loss works without pretrained weights.

Inputs are RGB in [0, 1] and are normalised with the ImageNet mean/std for every weight choice
(for ``random`` too, so that switching weights changes nothing else). The extractor is frozen
(``requires_grad=False``) and always in eval mode.

Perceptual loss: Johnson, Alahi, Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and
Super-Resolution", ECCV 2016; Ledig et al. (SRGAN), CVPR 2017.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..models.checkpoint import state_mismatch

__all__ = [
    "VGG16_URL",
    "VGG16_FILE",
    "VGG_LAYERS",
    "VGGWeightsError",
    "VGG16Features",
    "PerceptualLoss",
    "vgg16_feature_modules",
]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision cfg "D": numbers are conv widths, "M" max-pooling
_CFG_D: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _layer_names() -> dict[str, int]:
    names: dict[str, int] = {}
    idx, block, conv = 0, 1, 1
    for v in _CFG_D:
        if v == "M":
            idx += 1
            block, conv = block + 1, 1
        else:
            names[f"relu{block}_{conv}"] = idx + 1  # conv at idx, ReLU at idx + 1
            idx += 2
            conv += 1
    return names


VGG_LAYERS: dict[str, int] = _layer_names()
"""ReLU layer name -> index in ``features`` (e.g. ``relu2_2`` -> 8, ``relu3_3`` -> 15, ``relu4_3`` -> 22)."""


class VGGWeightsError(RuntimeError):
    """The requested VGG16 weights cannot be obtained or do not fit (message says what to do)."""


def vgg16_feature_modules() -> nn.Sequential:
    """``torchvision.models.vgg16().features`` rebuilt with the same indices (31 modules)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _CFG_D:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


def _hub_checkpoint_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def _load_imagenet(progress: bool) -> dict[str, Tensor]:
    cached = _hub_checkpoint_path()
    # torch.hub checks the hash only when it downloads; a file already there (e.g. placed by hand
    # offline) is loaded unchecked, so check it here: never record other weights as ImageNet's
    if cached.is_file() and not _sha256(cached).startswith("397923af"):
        raise VGGWeightsError(
            f"{cached} is not torchvision's ImageNet VGG16 file (its sha256 does not start with 397923af): "
            f"delete it and download {VGG16_URL} again, or set train.perceptual.vgg_weights to its path "
            "if other weights are intended"
        )
    try:
        return torch.hub.load_state_dict_from_url(
            VGG16_URL, progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except (OSError, HTTPException, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise VGGWeightsError(
            f"cannot obtain the ImageNet VGG16 weights ({type(err).__name__}: {err}). Without internet access, "
            f"download {VGG16_URL} elsewhere and place it at {_hub_checkpoint_path()} (torch hub's checkpoints "
            f"directory, file name {VGG16_FILE}, its sha256 must start with 397923af), or set "
            "train.perceptual.vgg_weights to the path of a torchvision-format VGG16 state dict, "
            "or to 'random' for random-weight features."
        ) from err


def _load_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise VGGWeightsError(
            f"VGG16 weights file {path} not found: set train.perceptual.vgg_weights to 'imagenet', 'random' or "
            "the path of an existing torchvision-format VGG16 state dict"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise VGGWeightsError(f"VGG16 weights file {path} is not a readable torch state dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, Mapping):
        raise VGGWeightsError(f"VGG16 weights file {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class VGG16Features(nn.Module):
    """Frozen VGG16 ``features`` returning the activations of the requested ReLU layers.

    Parameters
    ----------
    weights: ``"imagenet"``, ``"random"`` or the path of a torchvision-format state dict.
    layers: ReLU names such as ``["relu2_2", "relu3_3"]`` (any ``relu{block}_{conv}`` of VGG16).
    seed: seed of the ``random`` initialisation (ignored otherwise).
    progress: show the download progress bar for ``imagenet``.

    ``forward(x)`` takes RGB (N, 3, H, W) in [0, 1] and returns ``{layer: activation}``; only the
    modules up to the deepest requested layer run. ``weights_description`` records what was loaded.
    """

    mean: Tensor  # ImageNet normalisation buffers, declared for the type checker
    std: Tensor

    def __init__(self, weights: str = "random", layers: Sequence[str] = ("relu2_2", "relu3_3"), seed: int = 0,
                 progress: bool = False) -> None:
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("VGG16Features needs at least one layer (e.g. ['relu2_2'])")
        unknown = [n for n in layers if n not in VGG_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}: choose among {list(VGG_LAYERS)}")
        self.layers = layers
        self.features = vgg16_feature_modules()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._last = max(VGG_LAYERS[n] for n in layers)
        self._index = {VGG_LAYERS[n]: n for n in layers}

        if weights == "random":
            self._init_random(seed)
            self.weights_description = f"random(seed={seed})"
        elif weights == "imagenet":
            self.load_torchvision_state(_load_imagenet(progress), f"imagenet:{VGG16_FILE}")
            self.weights_description = f"imagenet:{VGG16_FILE} sha256-prefix 397923af"
        else:
            path = Path(weights).expanduser()
            self.load_torchvision_state(_load_file(path), str(path))
            self.weights_description = f"file:{path} sha256:{_sha256(path)}"
        self.requires_grad_(False)
        self.eval()

    def _init_random(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def load_torchvision_state(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load ``features.*`` keys of a torchvision VGG16 state dict (``classifier.*`` ignored)."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        other = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
        parts = state_mismatch(self.features.state_dict(), feats, prefix="features.")
        if other:
            parts.append(f"unexpected keys {other[:3]}")
        if parts:
            raise VGGWeightsError(f"{source} is not a torchvision VGG16 state dict: " + "; ".join(parts)
                                  + ". Use torchvision's vgg16 layout (features.0.weight ... features.28.bias).")
        self.features.load_state_dict({k: v.float() for k, v in feats.items()})

    def train(self, mode: bool = True) -> VGG16Features:  # noqa: ARG002 - frozen: always eval
        """Stays in eval mode whatever ``mode`` is (the extractor is frozen)."""
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG16Features expects (N, 3, H, W) RGB in [0, 1], got shape {tuple(x.shape)}")
        h = (x - self.mean) / self.std
        out: dict[str, Tensor] = {}
        for i, m in enumerate(self.features):
            h = m(h)
            if i in self._index:
                out[self._index[i]] = h
            if i >= self._last:
                break
        return out


class PerceptualLoss(nn.Module):
    """Weighted sum over VGG layers of the mean L1 (default) or MSE distance between features.

    ``loss = sum_l w_l * mean|phi_l(pred) - phi_l(target)|`` with target features computed without
    gradient. ``layer_weights`` maps layer names to weights (default: ``1 / n_layers`` each for the
    extractor's layers); L1 follows ESRGAN (Wang et al. 2018), MSE Johnson et al. 2016 / SRGAN.
    """

    def __init__(self, vgg: VGG16Features, layer_weights: Mapping[str, float] | None = None,
                 criterion: Literal["l1", "mse"] = "l1") -> None:
        super().__init__()
        if layer_weights is None:
            layer_weights = {n: 1.0 / len(vgg.layers) for n in vgg.layers}
        missing = [n for n in layer_weights if n not in vgg.layers]
        if missing:
            raise ValueError(f"PerceptualLoss: layers {missing} are not extracted by the VGG (it has {vgg.layers})")
        if criterion not in ("l1", "mse"):
            raise ValueError(f"PerceptualLoss: criterion must be 'l1' or 'mse', got {criterion!r}")
        self.vgg = vgg
        self.layer_weights = dict(layer_weights)
        self.criterion = criterion

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"PerceptualLoss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        fp = self.vgg(pred)
        with torch.no_grad():
            ft = self.vgg(target)
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        total = pred.new_zeros(())
        for name, w in self.layer_weights.items():
            total = total + w * dist(fp[name], ft[name])
        return total
