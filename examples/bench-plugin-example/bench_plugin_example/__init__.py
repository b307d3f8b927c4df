"""Example third-party plugins for medgen-bench.

Each plugin lives in its own module, named by its own entry point in the ``bench`` group
(see ``pyproject.toml``): :mod:`~bench_plugin_example.tinyae` (model),
:mod:`~bench_plugin_example.shapes2d` (dataset) and :mod:`~bench_plugin_example.mae` (metric).
The package itself imports nothing, so loading one plugin never imports the others.
"""

__version__ = "0.1.0"
