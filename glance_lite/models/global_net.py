"""The Global-Net G: a partial-convolution network that sees an image but never its patch (Eq. 6).

``Z_g = G(I, M_0)`` (Eq. 6) where ``M_0`` is 0 on the patch and 1 elsewhere (:func:`hole_mask`).
Every convolution is a :class:`~glance_lite.models.partial_conv.PartialConv2d` (Eq. 5) and the pooling layer
is :func:`~glance_lite.models.partial_conv.mask_max_pool2d`, so no output bit depends on a pixel inside the
hole.

Architecture and where each value comes from (**paper** = Wang et al., CVPR 2021; **reimpl** = the
public re-implementation of the paper; **ours** = our choice):

1. input centring ``(I - 0.5) / 0.5`` -- ours (there is no normalisation layer to do it);
2. ``convs[0]``: 7x7 partial conv, stride ``strides[0]``, padding 3, ``channels[0]`` maps -- reimpl;
   partial convolution in every conv layer -- paper (Sec. 3.1);
3. ReLU -- ours;
4. mask max-pool 3x3, stride 2, padding 1 -- the max-pool is reimpl, its 3x3/2/pad-1 shape is ours
   (ResNet stem convention); "pool the features, binarise the pooled mask" -- paper (Sec. 3.1);
5. ``convs[1:]``: 3x3 partial convs, padding 1, ``channels[i]`` maps, stride ``strides[i]``, each
   followed by ReLU -- channels 32/32/64/64/128/128/128 reimpl; strides (2,1,2,1,2,1,2) reimpl-like,
   ours where unstated;
6. masked global average pool over the positions where the final mask is 1 -- ours;
7. a linear layer to ``dim`` = n = 128, the size of the local feature Z_l -- paper.

Design notes.

* ReLU rather than LeakyReLU: after a partial conv every position whose mask is 0 holds exactly 0,
  and ReLU keeps every feature >= 0, so the paper's "normal" max-pooling equals max-pooling over the
  valid positions only (the zeros of the hole never win a max over a valid feature).  Invariant
  kept by every layer: ``feat == 0`` wherever ``mask == 0``.
* No BatchNorm (nor any other normalisation): in training mode batch statistics mix the samples of
  a batch, so the Z_g of one masked copy would depend on the other copies -- including copies
  whose hole is elsewhere and which therefore *show* this copy's patch.  That would leak the hole
  content and make Z_g depend on the batch.  Kaiming initialisation keeps the activations in
  range for the seven layers.
* Exactness: the hole is zeroed (``where``, see :func:`glance_lite.models.partial_conv.masked_input`) at
  the very first layer, so ``forward`` is bit-for-bit independent of pixels inside the hole, in
  train and eval mode, even if they are ``inf``/``nan``.  (Comparisons must use the same batch
  shape and device: different shapes may pick different convolution algorithms.)

Receptive field.  Each step (conv or pool) with kernel k, stride s, padding p maps output index i
to the input window ``[i*s - p, i*s - p + k - 1]``.  Composed over the steps (see
:meth:`GlobalNet.receptive_field`), a position (i, j) of the final feature map depends only on the
image pixels in rows ``[i*J + start, i*J + start + R - 1]`` (same for columns) and on the mask there.
For the default strides (2,1,2,1,2,1,2): total stride J = 32, receptive field R = 123, start = -61,
so the window is centred on pixel 32 i; a 256 image gives an 8x8 map, 128 gives 4x4, 48 gives 2x2.
A final position whose window does not meet the hole has the same feature as with no hole at all,
which is what an incremental scorer can exploit; Z_g itself mixes all positions through the pool.

Deviation: the paper does not describe the Global-Net's layers, its global pooling or its
normalisation; items 1, 3, 4 (shape), 6 and the absence of BatchNorm are ours (see above).

Defined in :doc:`/notebooks/02_partial_convolution`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glance_lite.models.partial_conv import MaskError, PartialConv2d, mask_max_pool2d, masked_input

__all__ = ["GlobalNet", "Step", "ReceptiveField", "hole_mask"]


@dataclass(frozen=True)
class Step:
    """One spatial step of the Global-Net, in execution order.

    ``kind`` is ``"pconv"`` (partial conv followed by ReLU; its module is ``GlobalNet.convs[index]``)
    or ``"pool"`` (mask max-pool; ``index`` is -1).  A step with kernel k, stride s, padding p maps
    output index i to the input window ``[i*s - p, i*s - p + k - 1]`` (outside the map = hole).
    """

    name: str
    kind: str
    kernel: int
    stride: int
    padding: int
    index: int = -1

    def out_size(self, n: int) -> int:
        """Output length of this step for an input of length ``n``."""
        return (n + 2 * self.padding - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class ReceptiveField:
    """Output index i of a step depends on inputs ``[i*jump + start, i*jump + start + size - 1]``."""

    size: int
    jump: int
    start: int

    def window(self, i: int) -> tuple[int, int]:
        """Inclusive input range seen by output index ``i``."""
        a = i * self.jump + self.start
        return a, a + self.size - 1


def _as_index_tensor(v: Any, name: str) -> Tensor:
    t = (v.detach() if isinstance(v, Tensor) else torch.as_tensor(v)).reshape(-1).cpu()
    if t.dtype == torch.bool or (t.is_floating_point() and not bool(torch.all(t == t.round()))):
        raise MaskError(f"hole_mask: {name} must be integers, got {v!r}")
    return t.to(torch.long)


def hole_mask(
    image_size: int | tuple[int, int],
    tops: Any,
    lefts: Any,
    patch_size: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """The initial masks M_0 of Eq. 6: float32 ``(B, 1, H, W)``, 0 on the patch, 1 elsewhere.

    ``tops`` and ``lefts`` are 1-D integer sequences (or tensors, or single ints) of equal length B;
    patch b covers rows ``tops[b] .. tops[b] + patch_size - 1`` and the matching columns.  A patch
    that does not fit inside the image raises :class:`~glance_lite.models.partial_conv.MaskError`.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    t = _as_index_tensor(tops, "tops")
    lf = _as_index_tensor(lefts, "lefts")
    if t.numel() != lf.numel():
        raise MaskError(f"hole_mask: {t.numel()} tops but {lf.numel()} lefts")
    p = int(patch_size)
    if p < 1 or p > min(h, w):
        raise MaskError(f"hole_mask: patch_size {p} does not fit an image of size {h}x{w}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > h - p or int(lf.min()) < 0 or int(lf.max()) > w - p):
        raise MaskError(
            f"hole_mask: a {p}x{p} patch must have 0 <= top <= {h - p} and 0 <= left <= {w - p}; "
            f"got tops in [{int(t.min())}, {int(t.max())}], lefts in [{int(lf.min())}, {int(lf.max())}]"
        )
    t, lf = t.to(device), lf.to(device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_r = (rows[None, :] >= t[:, None]) & (rows[None, :] < t[:, None] + p)  # (B, H)
    in_c = (cols[None, :] >= lf[:, None]) & (cols[None, :] < lf[:, None] + p)  # (B, W)
    hole = in_r[:, :, None] & in_c[:, None, :]
    return (~hole).to(torch.float32).unsqueeze(1)


class GlobalNet(nn.Module):
    """Global-Net of Eq. 6: ``forward(images (B,3,H,W) in [0,1], mask (B,1,H,W)) -> Z_g (B, dim)``.

    Args:
        channels: output channels of the partial convs (the first is the 7x7 one).
        strides: stride of each partial conv (same length as ``channels``).
        dim: size of Z_g.
        in_channels: image channels (3).

    Public structure, for exact incremental evaluation by a scorer:
    ``convs`` (``nn.ModuleList`` of :class:`PartialConv2d`), ``pool_after`` (index of the conv the
    max-pool follows), ``pool_kernel`` / ``pool_stride`` / ``pool_padding``, ``fc`` (the linear head),
    :meth:`steps` (the spatial steps in order), :meth:`run_step`, :meth:`receptive_field`,
    :meth:`forward_features` and :meth:`pool_head`.  ``forward == pool_head(*forward_features(...))``.
    """

    input_mean: float = 0.5
    input_std: float = 0.5

    def __init__(
        self,
        channels: Sequence[int] = (32, 32, 64, 64, 128, 128, 128),
        strides: Sequence[int] = (2, 1, 2, 1, 2, 1, 2),
        dim: int = 128,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        strides = tuple(int(s) for s in strides)
        if len(channels) == 0 or len(channels) != len(strides):
            raise ValueError(
                f"GlobalNet needs as many channels as strides (>= 1), got {channels} and {strides}"
            )
        if min(channels) < 1 or min(strides) < 1 or dim < 1:
            raise ValueError("GlobalNet: channels, strides and dim must be positive")
        self.channels = channels
        self.strides = strides
        self.dim = int(dim)
        self.in_channels = int(in_channels)
        convs = []
        c_in = self.in_channels
        for i, (c, s) in enumerate(zip(channels, strides)):
            k, pad = (7, 3) if i == 0 else (3, 1)
            convs.append(PartialConv2d(c_in, c, k, stride=s, padding=pad, bias=True))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.pool_after = 0
        self.pool_kernel = 3
        self.pool_stride = 2
        self.pool_padding = 1
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels[-1], self.dim)
        self.reset_parameters()

    @classmethod
    def from_preset(cls, preset: Any) -> "GlobalNet":
        """Build from a :class:`~glance_lite.common.presets.Preset` (global_channels/strides, descriptor_dim)."""
        return cls(
            channels=tuple(preset.global_channels),
            strides=tuple(preset.global_strides),
            dim=int(preset.descriptor_dim),
        )

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-in, ReLU) conv weights, zero conv biases, default linear init."""
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.fc.reset_parameters()

    # ------------------------------------------------------------------ structure
    def steps(self) -> list[Step]:
        """The spatial steps (partial convs and the pool) in execution order."""
        out: list[Step] = []
        for i, conv in enumerate(self.convs):
            out.append(
                Step(f"pconv{i}", "pconv", conv.kernel_size[0], conv.stride[0], conv.padding[0], i)
            )
            if i == self.pool_after:
                out.append(Step("pool", "pool", self.pool_kernel, self.pool_stride, self.pool_padding))
        return out

    def receptive_fields(self) -> list[ReceptiveField]:
        """Receptive field (in image pixels) of the output of every step, in order."""
        size, jump, start = 1, 1, 0
        rfs = []
        for st in self.steps():
            size += (st.kernel - 1) * jump
            start -= st.padding * jump
            jump *= st.stride
            rfs.append(ReceptiveField(size, jump, start))
        return rfs

    def receptive_field(self) -> ReceptiveField:
        """Receptive field of the final feature map (default strides: size 123, jump 32, start -61)."""
        return self.receptive_fields()[-1]

    def feature_size(self, height: int, width: int | None = None) -> tuple[int, int]:
        """Spatial size of the final feature map for an image of ``height x width``."""
        h, w = height, height if width is None else width
        for st in self.steps():
            h, w = st.out_size(h), st.out_size(w)
        return h, w

    def run_step(self, step: Step, feat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Apply one step: partial conv + ReLU, or mask max-pool."""
        if step.kind == "pconv":
            out, m = self.convs[step.index](feat, mask)
            return self.act(out), m
        return mask_max_pool2d(feat, mask, step.kernel, step.stride, step.padding)

    # ------------------------------------------------------------------ forward
    def _check(self, images: Tensor, mask: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise MaskError(
                f"GlobalNet expects images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        if mask.dim() == 2:
            mask = mask[None, None]
        elif mask.dim() == 3:
            mask = mask[:, None]
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != images.shape[2:]:
            raise MaskError(
                f"GlobalNet expects a mask of shape (B, 1, {images.shape[2]}, {images.shape[3]}), "
                f"got {tuple(mask.shape)}"
            )
        b, bm = images.shape[0], mask.shape[0]
        if b != bm and b != 1 and bm != 1:
            raise MaskError(f"batch sizes of images ({b}) and mask ({bm}) differ and neither is 1")
        return mask.to(images.dtype)

    def normalize(self, images: Tensor) -> Tensor:
        """Centre images from [0, 1] to [-1, 1] (ours)."""
        return (images - self.input_mean) / self.input_std

    def forward_features(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Final feature map and mask before the global pool: ``(B, C, h, w)``, ``(B, 1, h, w)``.

        ``mask`` is 1 = valid, 0 = hole; a batch of 1 on either side broadcasts against the other.
        """
        mask = self._check(images, mask)
        feat = self.normalize(images)
        for st in self.steps():
            feat, mask = self.run_step(st, feat, mask)
        return feat, mask

    def trace(self, images: Tensor, mask: Tensor) -> list[tuple[str, Tensor, Tensor]]:
        """``[(name, feat, mask), ...]`` after every step, starting with ``("input", ...)``."""
        mask = self._check(images, mask)
        feat = self.normalize(images)
        out = [("input", images, mask)]
        for st in self.steps():
            feat, mask = self.run_step(st, feat, mask)
            out.append((st.name, feat, mask))
        return out

    def propagate_mask(self, mask: Tensor) -> list[tuple[str, Tensor]]:
        """Masks only (no features, cheap): ``[("input", M_0), (step name, M), ...]``.

        Equal to the masks of :meth:`trace`, since a mask never depends on features.
        """
        if mask.dim() == 2:
            mask = mask[None, None]
        elif mask.dim() == 3:
            mask = mask[:, None]
        mask = mask.to(torch.float32)
        out = [("input", mask)]
        for st in self.steps():
            if st.kind == "pconv":
                m = F.max_pool2d(F.pad(mask, (st.padding,) * 4), st.kernel, st.stride) > 0
            else:
                m = F.max_pool2d(mask, st.kernel, st.stride, st.padding) > 0
            mask = m.to(torch.float32)
            out.append((st.name, mask))
        return out

    def pool_head(self, feat: Tensor, mask: Tensor) -> Tensor:
        """Final feature map ``(B, C, h, w)`` and mask ``(B, 1, h, w)`` to Z_g ``(B, dim)``: masked global
        average pool over positions with ``mask == 1``, then the linear layer.  A sample with no valid
        position (a hole covering the whole image) falls back to the plain mean."""
        if mask.shape[0] != feat.shape[0]:
            mask = mask.expand(feat.shape[0], *mask.shape[1:])
        m = mask.to(feat.dtype)
        count = m.sum(dim=(2, 3))  # (B, 1)
        total = masked_input(feat, m).sum(dim=(2, 3))  # (B, C)
        pooled = torch.where(count > 0, total / count.clamp_min(1.0), feat.mean(dim=(2, 3)))
        return self.fc(pooled)

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        """``Z_g = G(I, M_0)`` (Eq. 6): ``(B, dim)``; bit-for-bit independent of hole pixels."""
        return self.pool_head(*self.forward_features(images, mask))

    def extra_repr(self) -> str:
        rf = self.receptive_field()
        return f"receptive_field={rf.size}, total_stride={rf.jump}, dim={self.dim}"

