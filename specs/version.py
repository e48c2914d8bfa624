"""Spec version. A method image works with any harness speaking the same major version."""

SPEC_VERSION = "1.4"


def spec_major(version: str) -> str:
    return version.split(".", 1)[0]
