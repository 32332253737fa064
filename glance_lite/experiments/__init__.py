"""Stage 7, experiments: what the book and ``make results`` run (Sec. 4; chapters 00, 04, 06-08).

* :mod:`.chapters`         -- the chapters' shared set-up: dataset, install cell, the runs they reuse.
* :mod:`.reproduce`        -- ``glance-lite reproduce``: fit and evaluate every category (Tables 1, 2, 4).
* :mod:`.validation`       -- ``glance-lite validate``: a protocol that never reads a test image.
* :mod:`.context_check`    -- how much of a patch its context predicts, per validated source (chapter 08).
* :mod:`.one_class`        -- CIFAR-10 one-class classification (Sec. 4.3, Table 3; chapter 07).
* :mod:`.paper_dry`        -- the ``paper`` preset's full-size path for a few steps (``make paper-dry``).
* :mod:`.bench`            -- fast score maps against the per-patch loop (chapter 04).
* :mod:`.bench_resolution` -- what 256-pixel images would cost the ``cpu`` preset.
* :mod:`.bench_scaling`    -- data-parallel training on 1 and 2 ranks.

One-way flow: ... -> evaluate -> baselines -> **experiments** -> report; imports only from the stages
before it.
"""
