"""Many runs: sweeps (local worker processes or Slurm), submissions and blind evaluation (the recipe swap's
report, computed from records only, is a view: :mod:`harness.views.recipe_swap`).

- :mod:`harness.orchestration.sweep`        methods x speedups x seeds into one store, resumable
- :mod:`harness.orchestration.cluster`      Slurm through submitit: one job per run, re-attach, stopped jobs recorded
- :mod:`harness.orchestration.submission`   image -> conformance in the container -> smoke run -> bundle
- :mod:`harness.orchestration.blind`        organizers: verify and run submitted bundles on hidden data
"""
