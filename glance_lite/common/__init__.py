"""Stage 0, common: the leaf utilities every later stage uses, and the one preset switch.

* :mod:`.paths`       -- where things live (repository, ``data/``, runs, the package's ``weights/`` and
  ``results/``); chapter 00.
* :mod:`.fileio`      -- atomic writes, safe checkpoint loading, one-line errors.
* :mod:`.devices`     -- the one place that picks a device and sets mixed precision.
* :mod:`.distributed` -- data-parallel training with ``torch.distributed`` (book page *scaling*).
* :mod:`.presets`     -- ``GLANCE_PRESET``: smoke, cpu, paper (book intro).
* :mod:`.figures`     -- plotting primitives (loss curves, map overlays), used by training and evaluation.

The one-way flow is common -> data -> models -> train -> score -> evaluate -> baselines -> experiments
-> report; common is its start and imports nothing from any other stage.
"""
