"""Stage 8, report: the tables the reproduction chapters show (chapters 06-08).

* :mod:`.paper_tables` -- the paper's published numbers, labelled as the paper's.
* :mod:`.book_tables`  -- ours beside the paper's, built from the results files as DataFrames.
* :mod:`.architecture` -- the method's architecture figure (the introduction and chapter 03).

One-way flow: the last stage (... -> experiments -> **report**); only the command line
(:mod:`glance_lite.cli`) comes after it.
"""
