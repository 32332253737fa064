"""glance-lite: *Glancing at the Patch* (Wang et al., CVPR 2021) as a small, tested package.

The pipeline, one module per stage::

    data      mvtec, offline_data, cifar, corpus, download
    models    teachers, local_net (Eq. 1-4), partial_conv (Eq. 5), global_net (Eq. 6),
              heads (Eq. 7-9, 11-13), stains, model
    training  training (Eq. 3, 10)
    scoring   fast_features (Eq. 4-6 on the raster grid), idw (IDW maps), scoring (Eq. 11-13, raster scan)
    metrics   metrics (AU-PRO, pixel and image AUROC)
    figures   figures, evaluation, reproduce, cli

Scale is chosen by ``GLANCE_PRESET`` (see :mod:`glance_lite.presets`).
"""

__version__ = "0.1.0"

from .presets import Preset, describe, get_preset  # noqa: E402

__all__ = ["Preset", "get_preset", "describe", "__version__"]
