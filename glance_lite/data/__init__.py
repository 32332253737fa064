"""Stage 1, data: the datasets and the negative patches (Sec. 3.2, 4.1; chapter 00).

* :mod:`.mvtec`        -- MVTec AD in its official layout: discovery, validation, loading.
* :mod:`.offline_data` -- the offline default dataset in MVTec AD layout, made in seconds.
* :mod:`.cifar`        -- the CIFAR-10 one-class split (Sec. 4.1).
* :mod:`.corpus`       -- natural images and random patches for distilling the Local-Net (Eq. 1-3).
* :mod:`.debian_photos` -- 50 further photographs from Debian packages, checksummed (pretrain's extra corpus).
* :mod:`.download`     -- MVTec AD from its official links, checksummed and safely extracted.
* :mod:`.stains`       -- the stained negative patches p^- of the DAD head (Sec. 3.2; chapter 03).

One-way flow: common -> **data** -> models -> train -> score -> evaluate -> ...; imports only from
:mod:`glance_lite.common`.
"""
