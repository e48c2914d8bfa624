"""``python -m specs.sdk --method-dir DIR --exchange DIR``: serve a method (see :mod:`specs.sdk.server`).

The process ends as soon as the exchange does: its streams flushed, then ``os._exit``, without the
interpreter's teardown (with torch loaded, 0.1 s on an idle machine and seconds on a loaded one, all of it
time the harness waits for at shutdown). Method code that must clean up does it before replying."""

import logging
import os
import sys

from specs.sdk.server import main

code = main()
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
