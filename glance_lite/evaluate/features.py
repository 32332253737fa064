"""Feature visualisation of Fig. 5: local vs global features of abnormal patches, IAD and DAD views.

The paper crops 800 random patches from defective test images, keeps the abnormal ones (those that
overlap the ground truth) and shows t-SNE embeddings of their local features Z_l (circles) and of the
global features Z_g of their surroundings (triangles), "under the metrics" of each head, coloured by
the fraction of the patch that is anomalous.

*Our reading of the two views* (the paper does not define them):

* **IAD view** -- the IAD head compares Z_l and Z_g by Euclidean distance, so its view is the
  features themselves: t-SNE of ``[Z_l; Z_g]``.
* **DAD view** -- the DAD head's first layer is linear in the concatenation ``[Z*, Z_g]``, i.e.
  ``W_1 [Z*, Z_g] = W_l Z* + W_g Z_g``; each feature enters the classifier through its own half of
  ``W_1``. Its view is t-SNE of ``[W_l Z_l; W_g Z_g]``, the two features as the classifier sees them.

A head "separates" local from global features of abnormal patches when the two point clouds do not
overlap; :func:`separation` measures it with the cross-validated accuracy of a 5-nearest-neighbour
classifier telling local from global points in the embedding space (0.5 = no separation).

Defined in :doc:`/notebooks/08_ablation_and_features`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.global_net import hole_mask
from ..models.model import GlanceModel

__all__ = ["PatchFeatures", "abnormal_patch_features", "head_views", "tsne_pair", "separation"]


@dataclass
class PatchFeatures:
    """Z_l, Z_g (N, n) and the anomalous fraction (N,) of N abnormal patches."""

    z_l: torch.Tensor
    z_g: torch.Tensor
    fraction: np.ndarray


@torch.no_grad()
def abnormal_patch_features(
    model: GlanceModel,
    images: torch.Tensor,
    masks: torch.Tensor,
    n_patches: int = 800,
    seed: int = 0,
    batch_size: int = 64,
) -> PatchFeatures:
    """Crop ``n_patches`` random patches from ``images`` (B, 3, H, W) and keep the abnormal ones.

    ``masks`` is (B, 1, H, W) or (B, H, W) in {0, 1}.  A patch is abnormal when at least one of its
    pixels is anomalous; its fraction is the share of anomalous pixels.
    """
    model.eval()
    p = model.preset.patch_size
    B, _, H, W = images.shape
    m = masks.reshape(B, H, W).float()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(B, (n_patches,), generator=g)
    tops = torch.randint(H - p + 1, (n_patches,), generator=g)
    lefts = torch.randint(W - p + 1, (n_patches,), generator=g)
    frac = torch.stack([m[i, t : t + p, l : l + p].mean() for i, t, l in zip(idx, tops, lefts)]).numpy()
    keep = np.nonzero(frac > 0)[0]
    zl, zg = [], []
    for s in range(0, len(keep), batch_size):
        k = torch.as_tensor(keep[s : s + batch_size])
        i, t, l = idx[k], tops[k], lefts[k]
        patches = torch.stack([images[a, :, b : b + p, c : c + p] for a, b, c in zip(i, t, l)])
        zl.append(model.local_net(patches))
        zg.append(model.global_net(images[i], hole_mask((H, W), t, l, p)))
    n = model.preset.descriptor_dim
    z_l = torch.cat(zl) if zl else torch.zeros(0, n)
    z_g = torch.cat(zg) if zg else torch.zeros(0, n)
    return PatchFeatures(z_l, z_g, frac[keep])


@torch.no_grad()
def head_views(model: GlanceModel, feats: PatchFeatures) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (local, global) point sets of each head's view: ``{"IAD": (L, G), "DAD": (L, G)}``."""
    n = model.preset.descriptor_dim
    w1 = model.dad.net[0].weight  # (hidden, 2n)
    w_l, w_g = w1[:, :n], w1[:, n:]
    return {
        "IAD": (feats.z_l.numpy(), feats.z_g.numpy()),
        "DAD": ((feats.z_l @ w_l.T).numpy(), (feats.z_g @ w_g.T).numpy()),
    }


def tsne_pair(local: np.ndarray, global_: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Joint 2-d t-SNE (scikit-learn) of local and global points; returns their two embeddings."""
    from sklearn.manifold import TSNE

    x = np.concatenate([local, global_]).astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return emb[: len(local)], emb[len(local) :]


def separation(local: np.ndarray, global_: np.ndarray, seed: int = 0) -> float:
    """Cross-validated accuracy of a 5-NN classifier telling local from global points (0.5 = mixed)."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x = np.concatenate([local, global_])
    y = np.r_[np.zeros(len(local)), np.ones(len(global_))]
    folds = int(min(5, len(local), len(global_)))
    if folds < 2:
        return float("nan")
    clf = KNeighborsClassifier(n_neighbors=min(5, len(x) - len(x) // folds))
    return float(cross_val_score(clf, x, y, cv=folds).mean())
