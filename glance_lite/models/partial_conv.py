"""Partial convolution and mask-aware max-pooling (Eq. 5 and the pooling rule of Sec. 3.1).

The Global-Net of Wang et al. must describe the *surrounding* of a patch without ever seeing the
patch.  It does so with the partial convolution of Liu et al. (ECCV 2018, "Image inpainting for
irregular holes using partial convolutions"), Eq. 5 of the paper::

    x' = W^T (X ⊙ M) · sum(1) / sum(M) + b     if sum(M) > 0
    x' = 0                                     otherwise

evaluated at every window position, where ``X`` is the input window, ``M`` the binary mask window
(1 = valid pixel, 0 = hole) and ``sum(1)`` the number of entries of the window.  The updated mask is
1 wherever ``sum(M) > 0``.  For pooling layers the features are pooled normally and the mask is
replaced by the binary version of its pooled value.

Semantics match the reference implementation by Liu et al. (NVIDIA ``partialconv``):

* the input is multiplied by the mask (the mask is broadcast over channels in single-channel mode);
* the mask is zero-padded, so image borders are treated like holes and rescaled the same way;
* ``sum(1)`` is ``k_h * k_w`` for a single-channel mask and ``C_in * k_h * k_w`` in multi-channel mode;
* the bias is added *after* the rescaling, and a window with no valid entry outputs exactly 0,
  bias included;
* the new mask is ``(B, 1, H', W')`` for a single-channel mask and ``(B, C_out, H', W')`` (all
  channels equal) in multi-channel mode.

Exactness.  The hole is removed *before* anything else touches the input: ``X ⊙ M`` is computed as
``where(M > 0, X * M, 0)``.  For a binary mask this is the same number as ``X * M`` whenever ``X`` is
finite, but it also gives an exact ``+0`` where ``X`` is ``inf`` or ``nan`` (plain multiplication
would give ``nan`` there, since ``inf * 0 = nan``) and never a ``-0``.  Therefore the output -- values
*and* new mask -- is a function of the valid entries of ``X`` and of ``M`` only, bit for bit: any
change of ``X`` inside the hole leaves every output bit unchanged.  Everything computed downstream
inherits this property (see :mod:`glance_lite.models.global_net`).

Deviation: the reference keeps a *soft* mask (``clamp(sum(M), 0, 1)``) and computes the ratio as
``sum(1) / (sum(M) + 1e-8)``.  We compute the ratio exactly (``sum(1) / sum(M)``, 0 where
``sum(M) = 0``) and always return a binary mask ``sum(M) > 0``.  For binary masks, the only kind the
paper uses, both give the same mask and the same values up to float rounding.

Defined in :doc:`/notebooks/02_partial_convolution`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glance_lite.common.fileio import GlanceError

__all__ = ["MaskError", "PartialConv2d", "mask_max_pool2d", "masked_input", "window_mask_sum"]


class MaskError(GlanceError, ValueError):
    """A feature map and its mask do not fit together (shape, batch or channel mismatch)."""


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def masked_input(x: Tensor, mask: Tensor) -> Tensor:
    """``X ⊙ M`` with an exact ``+0`` wherever ``M == 0``, even if ``X`` is ``inf``/``nan`` there.

    ``mask`` is broadcast against ``x`` (``(B, 1, H, W)`` against ``(B, C, H, W)``, and a batch of 1
    against a batch of B in either direction).
    """
    mask = mask.to(x.dtype)
    return torch.where(mask > 0, x * mask, torch.zeros((), dtype=x.dtype, device=x.device))


def window_mask_sum(
    mask: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """``sum(M)`` over every window of a zero-padded mask, summed over the mask's channels.

    Returns a float32 tensor ``(B, 1, H', W')``.  Mask entries are summed in float32, so for binary
    masks the counts are exact integers (up to 2**24).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    m = mask.to(torch.float32)
    if m.shape[1] != 1:
        m = m.sum(dim=1, keepdim=True)
    if ph or pw:
        m = F.pad(m, (pw, pw, ph, ph))
    # avg_pool2d with divisor_override=1 is a plain window sum (no autocast to half precision).
    return F.avg_pool2d(m, (kh, kw), (sh, sw), padding=0, divisor_override=1)


class PartialConv2d(nn.Conv2d):
    """A 2-D partial convolution (Eq. 5), ``forward(x, mask) -> (out, new_mask)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as for :class:`torch.nn.Conv2d`
            (dilation 1, one group, zero padding).
        multi_channel: if True the mask has one channel per input channel, ``(B, C_in, H, W)``,
            ``sum(1) = C_in * k * k`` and the new mask has ``C_out`` (identical) channels; otherwise
            the mask is ``(B, 1, H, W)``, ``sum(1) = k * k`` and the new mask is ``(B, 1, H', W')``.

    ``mask`` uses 1 for valid pixels and 0 for the hole.  ``mask=None`` means "all valid", which makes
    the layer an ordinary convolution whose border outputs are rescaled for the zero padding.  The
    batch dimensions of ``x`` and ``mask`` may differ when one of them is 1 (one image, many masks).
    No gradient flows into the mask.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
        multi_channel: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        if isinstance(self.padding, str):  # pragma: no cover - guarded by the int-only signature
            raise ValueError("PartialConv2d needs an explicit integer padding")
        self.multi_channel = bool(multi_channel)

    @property
    def window_size(self) -> int:
        """``sum(1)`` of Eq. 5: entries of one window of the mask."""
        kh, kw = self.kernel_size
        return (self.in_channels if self.multi_channel else 1) * kh * kw

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}"

    def _check(self, x: Tensor, mask: Tensor) -> None:
        if x.dim() != 4:
            raise MaskError(f"PartialConv2d expects x of shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise MaskError(f"x has {x.shape[1]} channels, the layer expects {self.in_channels}")
        want_c = self.in_channels if self.multi_channel else 1
        if mask.dim() != 4 or mask.shape[1] != want_c or mask.shape[2:] != x.shape[2:]:
            kind = "multi-channel" if self.multi_channel else "single-channel"
            raise MaskError(
                f"{kind} PartialConv2d expects a mask of shape (B, {want_c}, {x.shape[2]}, "
                f"{x.shape[3]}), got {tuple(mask.shape)}"
            )
        bx, bm = x.shape[0], mask.shape[0]
        if bx != bm and bx != 1 and bm != 1:
            raise MaskError(f"batch sizes of x ({bx}) and mask ({bm}) differ and neither is 1")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Apply Eq. 5; return ``(out (B, C_out, H', W'), new_mask)``."""
        if mask is None:
            c = self.in_channels if self.multi_channel else 1
            mask = torch.ones(x.shape[0], c, *x.shape[2:], dtype=x.dtype, device=x.device)
        self._check(x, mask)
        with torch.no_grad():
            msum = window_mask_sum(mask, self.kernel_size, self.stride, self.padding)
            valid = msum > 0
            ratio = torch.where(valid, self.window_size / msum.clamp_min(1e-8), 0.0).to(x.dtype)
        raw = F.conv2d(masked_input(x, mask), self.weight, None, self.stride, self.padding)
        out = raw * ratio
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        out = torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
        new_mask = valid.to(mask.dtype if mask.is_floating_point() else x.dtype)
        if self.multi_channel:
            new_mask = new_mask.expand(-1, self.out_channels, -1, -1).contiguous()
        return out, new_mask


def mask_max_pool2d(
    x: Tensor,
    mask: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> tuple[Tensor, Tensor]:
    """Max-pool the features normally and refresh the mask as the binary pooled mask (Sec. 3.1).

    ``x`` is ``(B, C, H, W)``; ``mask`` is ``(B, 1 or C, H, W)`` with 1 = valid.  Returns
    ``(max_pool2d(x), (max_pool2d(mask) > 0))``.  Padding never counts as valid (``max_pool2d`` pads
    with ``-inf``).  When ``x`` is 0 wherever ``mask`` is 0 and ``x >= 0`` (partial convolution
    followed by ReLU, as in :class:`glance_lite.models.global_net.GlobalNet`), normal pooling equals pooling
    over the valid entries only, so the hole never wins a max.
    """
    if x.dim() != 4 or mask.dim() != 4 or mask.shape[2:] != x.shape[2:]:
        raise MaskError(
            f"mask_max_pool2d expects x (B, C, H, W) and mask (B, 1|C, H, W) of the same size, "
            f"got {tuple(x.shape)} and {tuple(mask.shape)}"
        )
    stride = kernel_size if stride is None else stride
    out = F.max_pool2d(x, kernel_size, stride, padding)
    pooled = F.max_pool2d(mask.to(torch.float32), kernel_size, stride, padding)
    return out, (pooled > 0).to(mask.dtype if mask.is_floating_point() else x.dtype)
