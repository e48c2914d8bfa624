"""``python -m specs.sdk --method-dir DIR --exchange DIR``: serve a method (see :mod:`specs.sdk.server`).

The process ends as soon as the exchange does: its streams flushed (Python's and C's), then ``os._exit``,
without the interpreter's teardown (with torch loaded, 0.1 s on an idle machine and seconds on a loaded one,
all of it time the harness waits for at shutdown). A ``sys.exit(n)`` in method code ends it the same way,
with its code. Method code that must clean up does it before replying; ``atexit`` handlers do not run."""

import ctypes
import logging
import os
import sys

from specs.sdk.server import main

try:
    code = main()
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
try:
    ctypes.CDLL(None).fflush(None)  # what C extensions wrote through stdio
except (OSError, AttributeError):
    pass
os._exit(code)
