"""Stage 3, train: fitting the models (Eq. 1-4 and 10; chapters 01 and 03).

* :mod:`.training` -- Local-Net distillation and fine-tuning (Eq. 1-4), then the joint Global-Net + DAD
  training (Eq. 10); ``fit`` writes a run folder.
* :mod:`.schedule` -- the learning-rate schedule (warm-up, cosine decay) of the distillation.
* :mod:`.distil`   -- the long Local-Net distillation that ships with the package (``glance-lite
  pretrain``; chapter 01).

One-way flow: common -> data -> models -> **train** -> score -> ...; imports only from the stages
before it.
"""
