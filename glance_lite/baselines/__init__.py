"""Stage 6, baselines: the methods the paper compares against (Sec. 4.2, Fig. 4; chapter 06).

* :mod:`.students` -- the TS baseline, *Uninformed Students* (Bergmann et al., CVPR 2020), on the run's
  own Local-Net, scored with the same raster grid and IDW maps; its students train until their held-out
  error stops falling.
* :mod:`.knn` -- the nearest-neighbour control: PatchCore's idea on the same Local-Net descriptor, no training.
* :mod:`.controls` -- runs both on a fitted run and picks the strongest, the control every "glance - local"
  figure uses.
* :mod:`.test_split` -- the test-split loop and maps file both controls share.

One-way flow: ... -> score -> evaluate -> **baselines** -> experiments -> report; imports only from the
stages before it.
"""
