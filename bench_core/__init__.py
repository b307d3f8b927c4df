"""medgen-bench engine: plugin manager, suites, runner, trainer, evaluator, store, reports.

Plugin authors import :data:`hookimpl` and the protocols of :mod:`bench_core.api`.
Importing this package does not import torch.
"""

from bench_core.api import API_VERSION, BenchError, DataError, DataSpec, MetricValue, PluginError
from bench_core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "BenchError",
    "DataError",
    "DataSpec",
    "MetricValue",
    "PluginError",
    "__version__",
    "hookimpl",
]
