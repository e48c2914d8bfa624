"""Method runners: ``inprocess``, ``subprocess`` (embedded default) and ``docker``.

Registered lazily so that importing the harness does not import the Docker SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.runners.base import MethodClient

#: the class is imported when a runner is asked for (``--help`` imports neither torch nor docker)
RUNNERS: Registry[type["MethodClient"]] = Registry("runner", of="harness.runners.base:MethodClient", classes=True)
RUNNERS.register("inprocess", "harness.runners.inprocess:InProcessClient")
RUNNERS.register("subprocess", "harness.runners.subprocess_runner:SubprocessClient")
RUNNERS.register("docker", "harness.runners.docker_runner:DockerClient")


def client_class(name: str) -> type["MethodClient"]:
    return RUNNERS.get(name)
