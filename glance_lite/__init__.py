"""glance-lite: *Glancing at the Patch* (Wang et al., CVPR 2021) as a small, tested package.

One module per idea, grouped by stage; data flows one way, each stage importing only from those
above it (checked by ``tests/test_layering.py``)::

    common       paths, fileio, devices, distributed, presets, figures
    data         mvtec, offline_data, cifar, corpus, debian_photos, download, stains
    models       teachers, local_net (Eq. 1-4), partial_conv (Eq. 5), global_net (Eq. 6),
                 heads (Eq. 7-9, 11-13), fast_features (Eq. 4-6 on a grid), model, shipped
    train        training (Eq. 3, 10), distil
    score        idw (IDW maps), score_norm, iad_metric, scoring (Eq. 11-13, raster scan)
    evaluate     metrics (AU-PRO, pixel and image AUROC), evaluation, features (Fig. 5)
    baselines    students (the TS / Uninformed Students baseline), knn (nearest neighbours on Z_l),
                 controls (the strongest local-only control), test_split
    experiments  chapters, reproduce, validation, combined (our extension), one_class (Table 3),
                 paper_dry, bench, bench_resolution, bench_scaling
    report       book_tables, paper_tables, architecture (the method's figure)
    cli          the ``glance-lite`` command (``python -m glance_lite``)

Scale is chosen by ``GLANCE_PRESET`` (see :mod:`glance_lite.common.presets`).
"""

__version__ = "0.1.0"

from .common.presets import Preset, describe, get_preset  # noqa: E402

__all__ = ["Preset", "get_preset", "describe", "__version__"]
