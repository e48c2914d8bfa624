"""Many runs: sweeps (local worker processes or Slurm), recipe swap, submissions and blind evaluation.

- :mod:`harness.orchestration.sweep`        methods x speedups x seeds into one store, resumable
- :mod:`harness.orchestration.cluster`      Slurm through submitit: one job per run, re-attach, stopped jobs recorded
- :mod:`harness.orchestration.recipe_swap`  every method under every retraining recipe (Wang et al. 2023)
- :mod:`harness.orchestration.submission`   image -> conformance in the container -> smoke run -> bundle
- :mod:`harness.orchestration.blind`        organizers: verify and run submitted bundles on hidden data
"""
