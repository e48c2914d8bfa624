"""PruningBench method-submission spec (the contract between harness and methods).

This package is a leaf: it depends on pydantic (and, for the method SDK,
on torch + safetensors) and never on the harness, timm or ultralytics.

- :mod:`specs.manifest`  the method manifest (``manifest.json`` in a method folder)
- :mod:`specs.messages`  the wire messages exchanged with a running method
- :mod:`specs.track`     the track config (one leaderboard setting)
- :mod:`specs.result`    the result record written for every run
- :mod:`specs.wire`      framing of messages on the exchange socket
- :mod:`specs.tensors`   what the messages' tensors mean, for both sides (needs torch)
- :mod:`specs.sdk`       the method authors' helpers and server (needs torch); the harness never imports it
"""

from specs.version import SPEC_VERSION

__all__ = ["SPEC_VERSION"]
