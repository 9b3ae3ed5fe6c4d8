"""segstream: score event streams on Kafka with partitioned, explainable models.

The distribution installs one import package with three parts:

* :mod:`segstream.shared` — settings, the model bundle and artifact store, routing and scoring
  kernels, the embedded broker (everything both sides need);
* :mod:`segstream.training` — the batch trainer (partitioner, group-by regression, profiles);
* :mod:`segstream.services` — the stream worker, the monitor, the simulator and the demo.

Example configurations ship as package data in :mod:`segstream.config` (see
:func:`segstream.shared.settings.example_names`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segstream")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
