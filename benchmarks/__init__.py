"""xrnn's benchmark suite, run as ``python -m benchmarks`` (``--help`` for the options).

:mod:`benchmarks.common` holds the parts (grids, FLOP counts, contenders, timers, the
matmul peak), :mod:`benchmarks.run` the command line and the result files.
"""
