"""Stage 4, score: anomaly localisation (Sec. 3.3, Eq. 11-13; chapter 04).

* :mod:`.idw`           -- inverse distance weighted interpolation: patch scores -> a per-pixel map.
* :mod:`.score_norm`    -- putting the two heads on one scale before Eq. 13 (ours).
* :mod:`.iad_metric`    -- the metric of the inconsistency score of Eq. 11: Euclidean or whitened (ours).
* :mod:`.scoring`       -- patch scores (Eq. 11-13), the raster scan and the score maps.

The dense features it scores come from :mod:`glance_lite.models.fast_features`.

One-way flow: common -> data -> models -> train -> **score** -> evaluate -> ...; imports only from the
stages before it.
"""
