"""Stage 2, models: the networks and heads of the method (Eq. 1-9; chapters 01-03).

* :mod:`.teachers`     -- the frozen ImageNet teacher R(.) (target of Eq. 1).
* :mod:`.local_net`    -- the Local-Net, its decoder and its losses (Eq. 1-4; chapter 01).
* :mod:`.partial_conv` -- partial convolution and mask-aware max-pooling (Eq. 5; chapter 02).
* :mod:`.global_net`   -- the Global-Net, which never sees the patch (Eq. 6; chapter 02).
* :mod:`.heads`        -- the IAD and DAD heads (Eq. 7-9, 11-13; chapter 03).
* :mod:`.fast_features` -- exact fast Z_l (Eq. 4) and Z_g (Eq. 5-6) of every patch of a grid: the
  Local-Net slid fully-convolutionally and the exact incremental Global-Net (chapter 04).
* :mod:`.model`        -- Local-Net + Global-Net + DAD head saved and loaded as one run folder.
* :mod:`.shipped`      -- the distilled Local-Net weights shipped in ``glance_lite/weights/``.

One-way flow: common -> data -> **models** -> train -> score -> ...; imports only from
:mod:`glance_lite.common` and :mod:`glance_lite.data`.
"""
