"""Errors with one-line, user-facing messages."""


class HarnessError(Exception):
    """Bad input or configuration (the user's to fix). ``str()`` is one line."""


class MethodFailure(Exception):
    """The method misbehaved: crashed, hung, or replied out of contract. Recorded as a failed run."""
