"""Stage 6, baselines: the methods the paper compares against (Sec. 4.2, Fig. 4; chapter 06).

* :mod:`.students` -- the TS baseline, *Uninformed Students* (Bergmann et al., CVPR 2020), on the run's
  own Local-Net, scored with the same raster grid and IDW maps.

One-way flow: ... -> score -> evaluate -> **baselines** -> experiments -> report; imports only from the
stages before it.
"""
