"""xrnn's benchmark suite, run as ``python -m benchmarks`` (``--help`` for the options).

:mod:`benchmarks.common` holds the parts (grids, FLOP counts, contenders, timers, the
matmul peak), :mod:`benchmarks.run` the command line and the result files. Companions:
:mod:`benchmarks.sweep` (time against hidden size, with a plot), and for the CPU grid's
rows :mod:`benchmarks.floors`, :mod:`benchmarks.same_window` and :mod:`benchmarks.profile`.
"""
