"""``python -m specs.sdk --method-dir DIR --exchange DIR``: serve a method (see :mod:`specs.sdk.server`)."""

import sys

from specs.sdk.server import main

sys.exit(main())
