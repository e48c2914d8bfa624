"""PruningBench harness: the trusted side (protocol, models, data, runners, results)."""

__version__ = "0.1.0"
