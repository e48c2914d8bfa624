"""``docker``: the method image runs under the Docker Engine (Docker SDK for Python) and
speaks exactly the wire protocol of the subprocess runner.

Sandbox: no network, read-only root filesystem, a small tmpfs for scratch (counted
against the memory limit), all capabilities dropped, no-new-privileges, a non-root
user, memory (no swap), CPU and pids limits within the organizers' caps
(:mod:`harness.runners.sandbox`), a per-call and a per-run deadline, a size-limited
log, and only the exchange directory mounted — never a dataset, never the host's
files. A method declaring spec >= 1.3 gets it read-only (replies come on the socket,
capped at the write limit); an older one gets it on a host tmpfs, so that what it
writes there never reaches the disk and counts against its memory. The container is
always removed. The image's content digest goes into the result record.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from pathlib import Path
from typing import Optional

from harness.errors import HarnessError, MethodFailure
from harness.runners.sandbox import docker_client, tmpfs_root
from harness.runners.socket_client import SocketClient
from harness.stopping import process_alive
from specs.manifest import MethodManifest
from specs.version import SPEC_VERSION, spec_major

METHOD_UID = 10001
EXCHANGE_MOUNT = "/exchange"
#: the container's scratch space (tmpfs: its pages count against the memory limit)
SCRATCH_MB = 256
PIDS_LIMIT = 256
BASE_IMAGE = f"pbench/method-base:{spec_major(SPEC_VERSION)}"


def image_tag(manifest: MethodManifest) -> str:
    """The local name of a method's image (docker/build-images.sh builds the same)."""
    return f"pbench/method-{manifest.id}:{manifest.version}"


@functools.lru_cache(maxsize=1)
def image_digest(image: str) -> str:
    """The content digest (image ID) of a local image, or a HarnessError saying how to build it."""
    import docker.errors
    try:
        return docker_client().images.get(image).id
    except docker.errors.ImageNotFound:
        raise HarnessError(f"image {image} not found; build it with `make images` "
                           f"(or `pbench-harness submit` for a method folder)") from None


def _owner(pid: int) -> str:
    """The ``pbench.owner`` label of the containers a harness process starts."""
    return f"{socket.gethostname()}/{pid}"


def one_line_api(err) -> str:
    """The engine's own explanation of an API error, on one line."""
    text = getattr(err, "explanation", None) or str(err)
    return " ".join(str(text).split())[:300]


class DockerClient(SocketClient):
    runner = "docker"

    def __init__(self, source, *args, image: Optional[str] = None, **kwargs):
        self.image = image or image_tag(source.manifest)
        digest = image_digest(self.image)  # before the exchange directory exists: nothing to clean up
        super().__init__(source, *args, **kwargs)
        self._container = None
        self._logs = ""
        self.image_digest = digest

    def _launch_options(self) -> tuple:
        return (self.image, self.image_digest)

    def _exchange_root(self) -> Optional[str]:
        return None if self.inline else str(tmpfs_root())

    @classmethod
    def _exchange_roots(cls) -> list[Path]:
        try:
            return [*super()._exchange_roots(), tmpfs_root()]
        except HarnessError:  # (no tmpfs: no exchange folder was made there)
            return super()._exchange_roots()

    @classmethod
    def remove_stale(cls) -> int:
        """Also the containers of such processes (labelled with this host and their pid): a method that ended
        stays behind as an exited container, one still running is stopped."""
        removed = super().remove_stale()
        host = socket.gethostname()  # (as in :func:`_owner`)
        try:
            containers = docker_client().containers.list(all=True, filters={"label": "pbench.role=method"})
        except Exception:  # (no engine: there is nothing of ours to remove)
            return removed
        for container in containers:
            owner_host, _, pid = container.labels.get("pbench.owner", "").rpartition("/")
            if owner_host == host and re.fullmatch("[0-9]+", pid) and not process_alive(int(pid)):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                    removed += 1
        return removed

    def _launch(self) -> None:
        import docker.errors
        import docker.types
        res = self.manifest.resources
        kwargs = {}
        if self.device == "cuda" and res.gpu:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        scratch = min(SCRATCH_MB, res.memory_mb)
        # create, then start: a container that cannot start (an image without an entrypoint, say) is
        # still ours to remove
        self._container = docker_client().containers.create(
            self.image, command=["--method-dir", "/method", "--exchange", EXCHANGE_MOUNT],
            detach=True, network_mode="none", read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={scratch}m"},
            cap_drop=["ALL"], security_opt=["no-new-privileges"], user=f"{METHOD_UID}:{METHOD_UID}",
            mem_limit=f"{res.memory_mb}m", memswap_limit=f"{res.memory_mb}m", nano_cpus=int(res.cpus * 1e9),
            pids_limit=PIDS_LIMIT, ipc_mode="none",
            volumes={str(self.exchange): {"bind": EXCHANGE_MOUNT, "mode": "ro" if self.inline else "rw"}},
            log_config=docker.types.LogConfig(type="json-file", config={
                "max-size": f"{self.limits.max_log_mb}m", "max-file": "1"}),
            environment=self.method_env(),
            labels={"pbench.role": "method", "pbench.method": self.manifest.id, "pbench.owner": _owner(os.getpid())},
            **kwargs)
        try:
            self._container.start()
        except docker.errors.APIError as e:
            self._kill()
            raise MethodFailure(f"the image cannot start: {one_line_api(e)}") from None

    def peak_memory_mb(self) -> Optional[float]:
        try:
            usage = self._container.stats(stream=False)["memory_stats"].get("max_usage")
        except Exception:
            return None
        return usage / 2**20 if usage else None

    def _exit_status(self) -> Optional[str]:
        if self._container is None:
            return "not started"
        try:
            self._container.reload()
        except Exception:
            return "container gone"
        state = self._container.attrs.get("State", {})
        if state.get("Status") not in ("exited", "dead"):
            return None
        if state.get("OOMKilled"):
            return f"killed: out of memory (limit {self.manifest.resources.memory_mb} MB)"
        return f"exit code {state.get('ExitCode')}"

    def _log_tail(self) -> str:
        if self._container is not None:
            try:
                self._logs = self._container.logs(tail=20).decode(errors="replace")
            except Exception:
                pass
        lines = [line for line in self._logs.splitlines() if line.strip()]
        return f": {lines[-1].strip()[:300]}" if lines else ""

    def _wait_exit(self, timeout: float) -> None:
        container = self._container
        if container is None:
            return
        try:
            container.wait(timeout=timeout)  # the engine answers when the container exits, no polling
        except Exception:  # timed out (requests' ReadTimeout / ConnectionError) or already gone
            pass

    def _kill(self) -> None:
        if self._container is not None:
            try:
                self._container.remove(force=True)
            except Exception:
                pass
            self._container = None
