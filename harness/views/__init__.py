"""What people read, computed only from result records (no torch, no protocol).

- :mod:`harness.views.leaderboard`  rows, ranks and tables (markdown, CSV, HTML)
- :mod:`harness.views.site`         the static site: an index and one page per track
"""
