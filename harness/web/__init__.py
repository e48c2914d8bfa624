"""The web platform (``pbench-harness serve``): a layer over the library, like :mod:`harness.cli`.

Library code never imports it. Module map:

- :mod:`harness.web.app`       the FastAPI application and the :class:`~harness.web.app.Platform` it serves
- :mod:`harness.web.api`       the JSON API (OpenAPI); :mod:`harness.web.pages` the pages built on it
- :mod:`harness.web.planning`  task builder request -> the CLI's validated plan, with the server's policy
- :mod:`harness.web.queue`     the plan queue: one dispatcher, the sweep machinery in a worker process
- :mod:`harness.web.worker`    the worker processes (plans, upload checks, model scans)
- :mod:`harness.web.runs`      the store seen from the server; a run's live state from its event log
- :mod:`harness.web.boards`    leaderboards: statistics, tie ranks, the Average view
- :mod:`harness.web.charts`    server-rendered SVG charts
- :mod:`harness.web.uploads`   model and method uploads: safe unzip, pickle scan, conformance checks
- :mod:`harness.web.auth`, :mod:`harness.web.config`: access (tokens, users, sessions, CSRF) and settings
"""
