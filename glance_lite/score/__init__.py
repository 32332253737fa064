"""Stage 4, score: anomaly localisation (Sec. 3.3, Eq. 11-13; chapter 04).

* :mod:`.fast_features` -- exact fast Z_l (Eq. 4) and Z_g (Eq. 5-6) of every patch of the raster grid.
* :mod:`.idw`           -- inverse distance weighted interpolation: patch scores -> a per-pixel map.
* :mod:`.score_norm`    -- putting the two heads on one scale before Eq. 13 (ours).
* :mod:`.iad_metric`    -- the metric of the inconsistency score of Eq. 11: Euclidean or whitened (ours).
* :mod:`.scoring`       -- patch scores (Eq. 11-13), the raster scan and the score maps.

One-way flow: common -> data -> models -> train -> **score** -> evaluate -> ...; imports only from the
stages before it.
"""
