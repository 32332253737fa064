"""Local-Net L(.), its decoder D(.) and the losses that distil it (Eq. 1-4).

The Local-Net embeds a p x p patch into a local feature Z_l = L(p) (Eq. 4).  It is distilled from a
frozen ImageNet teacher R(.) (see :mod:`glance_lite.models.teachers`) with

* the knowledge distillation loss ``l_k = ||D(L(p)) - R(p)||_2^2``           (Eq. 1),
* the compactness loss ``l_c = sum_{i != j} c_ij`` over the batch correlation matrix of L(p)  (Eq. 2),
* ``l_local = lambda_k l_k + lambda_c l_c``                                   (Eq. 3).

**Architecture.**  The paper takes the Local-Net from *Uninformed Students* (Bergmann, Fauser,
Sattlegger and Steger, "Uninformed Students: Student-Teacher Anomaly Detection with Discriminative
Latent Embeddings", CVPR 2020, supplementary Tables for p = 17, 33, 65).  We reconstructed the
layer tables from that paper's description and from the public re-implementations (denguir/
student-teacher-anomaly-detection, LuyaooChen/uninformed-students-pytorch).  All convolutions are
unpadded with stride 1; every convolution except the last is followed by a leaky ReLU of slope 5e-3;
max-pools are 2x2 with stride 2; the last convolution yields the 1 x 1 x ``dim`` descriptor::

    p = 17:  conv 6x6x128 -> conv 5x5x256 -> conv 5x5x256 -> conv 4x4xdim
             (17 -> 12 -> 8 -> 4 -> 1)
    p = 33:  conv 5x5x128 -> pool -> conv 5x5x256 -> pool -> conv 2x2x256 -> conv 4x4xdim
             (33 -> 29 -> 14 -> 10 -> 5 -> 4 -> 1)
    p = 65:  conv 5x5x128 -> pool -> conv 5x5x128 -> pool -> conv 5x5x256 -> pool
             -> conv 4x4x256 -> conv 1x1xdim
             (65 -> 61 -> 30 -> 26 -> 13 -> 9 -> 4 -> 1 -> 1)

Deviation (architecture): the published table for p = 17 gives the first kernel as 5x5, which cannot
reach a 1 x 1 output with the later layers; we use 6x6 (17 -> 12), as the re-implementations do.  For
p = 65 the table's last layer is listed as 3x3 although its input is 1 x 1; we use 1x1.  Because of
the floor in the 2x2/2 max-pools, the p = 33 network reads only the top-left 32 x 32 pixels of its
patch and the p = 65 network the top-left 60 x 60 (a property of the original architecture, kept).

**Input normalisation.**  Patches in [0, 1] are shifted to [-0.5, 0.5] (``x - 0.5``) inside
:meth:`LocalNet.forward` and :meth:`LocalNet.dense`; callers always pass [0, 1] images.

**Dense features.**  :meth:`LocalNet.dense` evaluates the network at every patch position of an image
at once, without a loop over patches (Bailer, Habtegebrial, Varanasi and Stricker, "Fast Dense Feature
Extraction with CNNs that have Pooling or Striding Layers", BMVC 2017, achieve the same with shifted
pooling and unwarping).  We use the equivalent "dilation" form: every 2x2/2 max-pool becomes a 2x2
max-pool of stride 1 with the current dilation, after which the dilation doubles, and every later
convolution runs with that dilation.  Output (i, j) then equals ``forward`` of the patch whose top-left
pixel is (i, j), exactly (up to float rounding).

**Losses.**  Deviation (scaling): Eq. 1 and Eq. 2 are written as sums.  By default
(``reduction="mean"``) we average instead -- the squared error over the teacher dimensions and the
correlations over the n(n - 1) off-diagonal pairs -- so that both terms are O(1) whatever the feature
sizes and lambda_k = lambda_c = 1 balances them.  ``reduction="sum"`` gives the literal sums (mean over
the batch in both cases).  Deviation (sign): a literal ``sum_{i != j} c_ij`` of *signed* correlations
is unbounded below in spirit (minimising it rewards anti-correlated dimensions rather than decorrelated
ones); like Uninformed Students we penalise absolute values ``|c_ij|`` (``absolute=False`` gives the
signed reading).  As in Uninformed Students, teacher features are standardised per dimension with the
mean and standard deviation over the distillation set (:class:`FeatureNormaliser`) before Eq. 1.

Defined in :doc:`/notebooks/01_local_net`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LocalNet",
    "grid_positions",
    "Decoder",
    "FeatureNormaliser",
    "LAYER_TABLES",
    "distillation_loss",
    "compactness_loss",
    "correlation_matrix",
    "local_loss",
]

LEAKY_SLOPE = 5e-3
"""Slope of the leaky ReLUs (Uninformed Students)."""

# A layer is ("conv", kernel, out_channels) or ("pool", 2, 0).  ``None`` channels = descriptor dim.
LayerSpec = tuple[str, int, int | None]
LAYER_TABLES: dict[int, tuple[LayerSpec, ...]] = {
    17: (("conv", 6, 128), ("conv", 5, 256), ("conv", 5, 256), ("conv", 4, None)),
    33: (
        ("conv", 5, 128), ("pool", 2, 0),
        ("conv", 5, 256), ("pool", 2, 0),
        ("conv", 2, 256), ("conv", 4, None),
    ),
    65: (
        ("conv", 5, 128), ("pool", 2, 0),
        ("conv", 5, 128), ("pool", 2, 0),
        ("conv", 5, 256), ("pool", 2, 0),
        ("conv", 4, 256), ("conv", 1, None),
    ),
}
"""Layer tables of the Uninformed Students patch networks, keyed by the patch size p."""

Reduction = Literal["mean", "sum"]


def grid_positions(n: int, p: int, stride: int) -> Tensor:
    """Top (or left) coordinates of a raster of p-pixel patches over n pixels with the given stride:
    ``0, stride, 2*stride, ...`` and, if the last of those leaves pixels uncovered, ``n - p`` too.

    The one definition of the patch grid, shared by training (:meth:`LocalNet.on_grid`) and scoring
    (:func:`glance_lite.score.scoring.patch_grid`).
    """
    if n < p:
        raise ValueError(f"{n} pixels are fewer than the {p}-pixel patch")
    pos = list(range(0, n - p + 1, stride))
    if pos[-1] != n - p:
        pos.append(n - p)
    return torch.tensor(pos, dtype=torch.long)


class LocalNet(nn.Module):
    """The Local-Net L(.): a p x p patch in [0, 1] -> a ``dim``-d local feature Z_l (Eq. 4).

    Args:
        patch_size: 17, 33 (the paper's) or 65.
        dim: descriptor dimension n (128 in the paper).
    """

    def __init__(self, patch_size: int = 33, dim: int = 128) -> None:
        super().__init__()
        if patch_size not in LAYER_TABLES:
            raise ValueError(f"patch_size must be one of {sorted(LAYER_TABLES)}, got {patch_size}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.patch_size = int(patch_size)
        self.dim = int(dim)
        self.layers = LAYER_TABLES[patch_size]
        convs: list[nn.Conv2d] = []
        cin = 3
        for kind, k, cout in self.layers:
            if kind == "conv":
                cout = dim if cout is None else cout
                convs.append(nn.Conv2d(cin, cout, k))
                cin = cout
        self.convs = nn.ModuleList(convs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) normal initialisation for leaky-ReLU layers, zero biases.

        PyTorch's default convolution initialisation shrinks the signal at every layer: through these
        four or five unpadded layers a fresh network's features Z_l have a standard deviation of about
        0.005 on natural patches, and with Adam the decoder then needs thousands of steps just to reach
        the scale of the (standardised) teacher targets -- distillation looked stuck at l_k = 1.0.
        With He initialisation Z_l starts at about 0.25. ours (Uninformed Students gives no initialiser).
        """
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)

    @staticmethod
    def normalise(x: Tensor) -> Tensor:
        """The input normalisation: [0, 1] -> [-0.5, 0.5]."""
        return x - 0.5

    def _run(self, x: Tensor, dense: bool) -> Tensor:
        """Apply the layer table; ``dense`` switches to stride-1 pooling with growing dilation."""
        x = self.normalise(x)
        dilation = 1
        i = 0
        n = len(self.convs)
        for kind, k, _ in self.layers:
            if kind == "conv":
                conv = self.convs[i]
                x = F.conv2d(x, conv.weight, conv.bias, dilation=dilation) if dense else conv(x)
                i += 1
                if i < n:
                    x = F.leaky_relu(x, LEAKY_SLOPE)
            elif dense:
                x = F.max_pool2d(x, k, stride=1, dilation=dilation)
                dilation *= k
            else:
                x = F.max_pool2d(x, k, stride=k)
        return x

    def forward(self, patches: Tensor) -> Tensor:
        """Local features Z_l = L(p) (Eq. 4): (B, 3, p, p) in [0, 1] -> (B, dim)."""
        p = self.patch_size
        if patches.ndim != 4 or patches.shape[1] != 3 or tuple(patches.shape[-2:]) != (p, p):
            raise ValueError(f"LocalNet expects patches of shape (B, 3, {p}, {p}), got {tuple(patches.shape)}")
        return self._run(patches, dense=False).flatten(1)

    def dense(self, images: Tensor, stride: int = 1, chunk: int = 4) -> Tensor:
        """Local features of every p x p patch of the images, without a loop over patches.

        Args:
            images: (B, 3, H, W) in [0, 1], H, W >= p.
            stride: keep every ``stride``-th position (the full map is computed, then subsampled).
            chunk: images per pass (bounds memory; the result does not depend on it).

        Returns:
            (B, dim, H', W') with H' = ceil((H - p + 1) / stride); entry [..., i, j] equals
            ``forward(images[..., i*s : i*s + p, j*s : j*s + p])``.

        On CUDA, TF32 convolutions (PyTorch's default for cuDNN) may round the dense and the
        per-patch pass differently by more than 1e-5 (not measured here); set
        ``torch.backends.cudnn.allow_tf32 = False`` when the two must agree to 1e-5.
        """
        p = self.patch_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"dense expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h < p or w < p:
            raise ValueError(f"images of {h}x{w} pixels are smaller than the {p}x{p} patch")
        if stride < 1 or chunk < 1:
            raise ValueError(f"stride and chunk must be positive, got {stride} and {chunk}")
        outs = []
        for s in range(0, images.shape[0], chunk):
            y = self._run(images[s : s + chunk], dense=True)
            # the network may read fewer than p rows/columns (floor in the pools): crop to H-p+1
            outs.append(y[..., : h - p + 1 : stride, : w - p + 1 : stride])
        return torch.cat(outs)

    @property
    def stride(self) -> int:
        """The network's natural output stride J (the product of its pooling sizes; 4 for p = 33)."""
        j = 1
        for kind, k, _ in self.layers:
            if kind == "pool":
                j *= int(k)
        return j

    def strided(self, images: Tensor, chunk: int = 16) -> Tensor:
        """Z_l of the patches whose top-left corners lie on the grid ``0, J, 2J, ...`` (J = :attr:`stride`).

        The plain fully-convolutional pass over the whole image computes exactly these, J*J times
        cheaper than :meth:`dense`.  Returns (B, dim, H', W') with H' = floor((H - p) / J) + 1, so every
        patch lies inside the image; entry [..., i, j] equals ``forward(images[..., iJ:iJ+p, jJ:jJ+p])``.
        """
        p, j = self.patch_size, self.stride
        h, w = images.shape[-2:]
        if h < p or w < p:
            raise ValueError(f"images of {h}x{w} pixels are smaller than the {p}x{p} patch")
        outs = [self._run(images[s : s + chunk], dense=False) for s in range(0, images.shape[0], chunk)]
        return torch.cat(outs)[..., : (h - p) // j + 1, : (w - p) // j + 1]

    def on_grid(self, images: Tensor, chunk: int = 16) -> tuple[Tensor, Tensor, Tensor]:
        """Z_l on the grid of :func:`grid_positions` with step J: the stride-J lattice plus, when the
        lattice misses it, the last row/column of patches touching the bottom/right border.

        Returns ``(features (B, dim, gh, gw), tops (gh,), lefts (gw,))``; entry [..., i, j] equals
        ``forward(images[..., tops[i]:tops[i]+p, lefts[j]:lefts[j]+p])``.  These are the positions the
        score maps are computed on (:func:`glance_lite.score.scoring.patch_grid` with stride J), so training
        on them leaves no scored position unseen.
        """
        p, j = self.patch_size, self.stride
        h, w = images.shape[-2:]
        z = self.strided(images, chunk)
        tops, lefts = grid_positions(h, p, j), grid_positions(w, p, j)
        if len(tops) > z.shape[-2]:          # the bottom row of patches, top = h - p
            z = torch.cat([z, self.strided(images[..., h - p :, :], chunk)], dim=-2)
        if len(lefts) > z.shape[-1]:         # the right column, left = w - p (bottom-right corner included)
            col = self.strided(images[..., :, w - p :], chunk)
            if len(tops) > col.shape[-2]:
                col = torch.cat([col, self.strided(images[..., h - p :, w - p :], chunk)], dim=-2)
            z = torch.cat([z, col], dim=-1)
        return z, tops, lefts

    @property
    def receptive_field(self) -> int:
        """Side of the top-left square of the patch that the output actually depends on."""
        rf, dilation = 1, 1
        for kind, k, _ in self.layers:
            rf += dilation * (k - 1)
            if kind == "pool":
                dilation *= k
        return rf

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, dim={self.dim}"


class Decoder(nn.Linear):
    """The decoder D(.) of Eq. 1: a linear map from the local feature to the teacher's dimension."""

    def __init__(self, dim: int = 128, teacher_dim: int = 512) -> None:
        super().__init__(dim, teacher_dim)


class FeatureNormaliser(nn.Module):
    """Per-dimension standardisation of teacher features, fitted on the cached distillation set.

    ``forward(f) = (f - mean) / std`` with mean and std (buffers, saved in the state dict) computed
    over the rows of the cached teacher features; ``inverse`` undoes it.  Use it on R(p) before Eq. 1.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @classmethod
    def from_features(cls, features: Tensor, eps: float = 1e-6) -> "FeatureNormaliser":
        """Fit mean and std (unbiased) per dimension on (N, d) features, N >= 2."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need (N >= 2, d) features to fit, got {tuple(features.shape)}")
        f = features.detach().double()
        norm = cls(features.shape[1], eps)
        norm.mean.copy_(f.mean(0).float())
        norm.std.copy_(f.std(0).clamp_min(eps).float())
        return norm.to(features.device)

    def forward(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std

    def inverse(self, features: Tensor) -> Tensor:
        return features * self.std + self.mean


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def distillation_loss(pred: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Knowledge distillation loss l_k = ||D(L(p)) - R(p)||_2^2 (Eq. 1), averaged over the batch.

    ``reduction="mean"`` (default) also averages over the d feature dimensions (= Eq. 1 / d);
    ``"sum"`` sums them (Eq. 1 literally).  ``pred`` and ``target`` have shape (B, d).
    """
    _check_reduction(reduction)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be (B, d); got {tuple(pred.shape)} and {tuple(target.shape)}")
    sq = (pred - target).pow(2)
    return sq.mean() if reduction == "mean" else sq.sum(1).mean()


def correlation_matrix(z: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation matrix (n, n) of the n descriptor dimensions over a (B, n) batch, B >= 2.

    A constant dimension gets correlation 0 with every other one (``eps`` guards the division).
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need a (B >= 2, n) batch of descriptors, got {tuple(z.shape)}")
    zc = z - z.mean(0, keepdim=True)
    zn = zc / (zc.pow(2).mean(0, keepdim=True) + eps).sqrt()
    return zn.T @ zn / z.shape[0]


def compactness_loss(z: Tensor, absolute: bool = True, reduction: Reduction = "mean") -> Tensor:
    """Compactness loss l_c = sum_{i != j} |c_ij| (Eq. 2) over the batch correlation matrix of z.

    Args:
        z: (B, n) local features L(p) of one mini-batch.
        absolute: penalise |c_ij| (default, as Uninformed Students); ``False`` sums signed c_ij.
        reduction: ``"mean"`` averages over the n(n-1) off-diagonal entries (default, in [0, 1]);
            ``"sum"`` sums them (Eq. 2 literally).

    Zero exactly when the dimensions are decorrelated over the batch.  With B <= n they cannot all be
    (the matrix has rank < B), so the minimum is then above zero.
    """
    _check_reduction(reduction)
    c = correlation_matrix(z)
    n = c.shape[0]
    if n < 2:
        return c.new_zeros(())
    off = c[~torch.eye(n, dtype=torch.bool, device=c.device)]
    if absolute:
        off = off.abs()
    return off.mean() if reduction == "mean" else off.sum()


def local_loss(
    pred: Tensor,
    target: Tensor,
    z: Tensor,
    lambda_k: float = 1.0,
    lambda_c: float = 1.0,
    reduction: Reduction = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Local-Net objective l_local = lambda_k l_k + lambda_c l_c (Eq. 3).

    Args:
        pred: decoded local features D(L(p)), (B, d).
        target: teacher features R(p) (normalised with :class:`FeatureNormaliser`), (B, d).
        z: local features L(p), (B, n).
        lambda_k, lambda_c: loss weights.
        reduction: passed to both losses (see their docstrings).

    Returns:
        ``(total, parts)`` with ``parts = {"distillation", "compactness", "total"}`` as detached
        0-d tensors (for logging).
    """
    lk = distillation_loss(pred, target, reduction)
    lc = compactness_loss(z, reduction=reduction)
    total = lambda_k * lk + lambda_c * lc
    return total, {"distillation": lk.detach(), "compactness": lc.detach(), "total": total.detach()}
