"""Pure numpy kernels (kernels layer): arrays in, arrays or small records out.

Modules here import numpy (and, where needed, :mod:`pixelquery_batch.expr` and
:mod:`pixelquery_batch.types`) and nothing else: no I/O, no clients, no clocks, no
logging in loops. They return partial aggregates with an associative merge so that
chunked reads, time series and region rollups agree with a single pass.

- :mod:`pixelquery_batch.kernels.stats`: zonal statistics over a weighted pixel mask
  and the mergeable :class:`~pixelquery_batch.kernels.stats.Moments` partials.
"""
