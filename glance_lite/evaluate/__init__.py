"""Stage 5, evaluate: metrics and the evaluation of fitted runs (Sec. 4.2, 4.4; chapters 05, 06, 08).

* :mod:`.metrics`    -- the PRO curve and its normalised area, pixel and image AUROC (chapter 05).
* :mod:`.evaluation` -- a fitted run on a category's test split, and maps for unlabelled images
  (chapter 06).
* :mod:`.features`   -- the feature views of Fig. 5: local vs global features of abnormal patches
  (chapter 08).
* :mod:`.context`    -- how much of Z_l the Global-Net predicts from the context on normal patches,
  against the place alone (chapter 08).

One-way flow: ... -> train -> score -> **evaluate** -> baselines -> experiments -> report; imports only
from the stages before it.
"""
