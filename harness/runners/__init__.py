"""Method runners: ``inprocess``, ``subprocess`` (embedded default) and ``docker``.

Registered lazily so that importing the harness does not import the Docker SDK.
"""

from __future__ import annotations

from harness.registry import Registry, resolve

RUNNERS: Registry[str] = Registry("runner")
RUNNERS.register("inprocess", "harness.runners.inprocess:InProcessClient")
RUNNERS.register("subprocess", "harness.runners.subprocess_runner:SubprocessClient")
RUNNERS.register("docker", "harness.runners.docker_runner:DockerClient")


def client_class(name: str):
    return resolve(RUNNERS.get(name))
