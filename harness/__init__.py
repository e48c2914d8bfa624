"""PruningBench harness: the trusted side.

Module map (imports go one way: ``cli`` -> library -> ``specs``; library code never imports typer; the harness
imports the contract ``specs``, never the authors' SDK ``specs.sdk``; orchestration never imports views):

- :mod:`harness.protocol`       the protocol core: one run (``protocol.run.evaluate``), grouping, observations,
                                pruning, sparse training, training loops, base checkpoints, latency
- :mod:`harness.tasks`          what the protocol is written against: classification, detection
- :mod:`harness.models`         the model zoo, model references (torchvision:, timm:, factories, files) and each
                                architecture's prune adapter
- :mod:`harness.data`           dataset loaders (digits, CIFAR, ImageNet, COCO) and tiny fixtures
- :mod:`harness.runners`        how a method runs: inprocess, subprocess, docker (the wire protocol's harness side)
- :mod:`harness.plan`           the run plan: every check of what a user asks to run, one RunSpec per run,
                                ``run_plan`` (the protocol trusts the RunSpecs it builds)
- :mod:`harness.store`          the result store: run keys (pure: computed from a resolved base digest, never
                                training one), run directories, staging, validated records
- :mod:`harness.orchestration`  many runs: sweeps (local, Slurm), submissions, blind evaluation
- :mod:`harness.views`          leaderboards, the recipe-swap report and the static site, from records only
- :mod:`harness.cli`            the Typer CLI ``pbench-harness`` (parse -> library call)
- :mod:`harness.methods`, :mod:`harness.tracks`, :mod:`harness.registry`, :mod:`harness.conformance`,
  :mod:`harness.provenance`, :mod:`harness.errors`, :mod:`harness.labels`, :mod:`harness.docs`: method discovery,
  track registry, lazy typed registries, the method conformance suite, provenance, errors, run labels,
  generated docs
"""

__version__ = "0.1.0"
