"""What people read, computed only from result records (no torch, no protocol).

- :mod:`harness.views.leaderboard`  rows, ranks and tables (markdown, CSV, HTML)
- :mod:`harness.views.site`         the static site: an index and one page per track
- :mod:`harness.views.recipe_swap`  every method under every retraining recipe (Wang et al. 2023): does the
  ranking hold? (the sweep that runs it is ``pbench-harness recipe-swap``)
"""
