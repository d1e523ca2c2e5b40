"""simtrain: a discrete-event simulator of large-model training on virtual GPU clusters.

Data flows one way: YAML -> validated frozen dataclasses (config, hardware, model)
-> workload (memory, costs) -> schedule (per-rank action lists) -> SimPy engine -> trace
-> metrics, plots, JSON.
"""

__version__ = "0.1.0"
