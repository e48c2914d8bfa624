"""What a method container may cost its host: the organizers' caps, resolved, and their checks.

Caps come in layers (:class:`specs.manifest.SandboxLimits`): the organizers' flags, then the track's
``sandbox:``, then the harness's defaults, which come from the Docker Engine's host (half its
memory, all its cores) or are fixed here (:data:`DEFAULT_CALL_TIMEOUT_CAP_S`,
:data:`DEFAULT_WRITE_MB`, :data:`DEFAULT_LOG_MB`). A manifest asking for more than a cap is
rejected before anything runs (:func:`check_resources`).

Where the caps bite (docker runner, :mod:`harness.runners.docker_runner`):

- memory (no swap), CPUs and the per-call deadline: the manifest's own ``resources``, which the caps
  bound; the container's ``/tmp`` is a tmpfs counted against that memory;
- host writes: a method declaring spec >= 1.3 sees its exchange directory read-only and answers on
  the socket, where no reply may exceed ``max_write_mb``; an older method writes its replies into an
  exchange directory on a host tmpfs (never the disk), where every byte counts against its memory
  limit (the kernel's memory cgroup), and the harness fails it at the first message once it holds
  more than ``max_write_mb``;
- logs: the engine keeps at most ``max_log_mb`` of the method's output.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.errors import HarnessError
from specs.manifest import MethodManifest, SandboxLimits

#: the per-call deadline a manifest may declare unless the organizers allow more (seconds)
DEFAULT_CALL_TIMEOUT_CAP_S = 3600.0
#: the most one reply may carry (or an old method may leave in its exchange directory), in MB: a
#: float64 gradient of every weight of ResNet-50 or YOLOv8m (~26 M parameters) is ~210 MB
DEFAULT_WRITE_MB = 512
#: what the engine keeps of a method's stdout + stderr, in MB
DEFAULT_LOG_MB = 10
#: where exchange directories that a method may write go (spec < 1.3 under docker); must be a tmpfs
TMPFS_ENV = "PBENCH_EXCHANGE_TMPFS"
DEFAULT_TMPFS = "/dev/shm"

FLAGS = {"max_memory_mb": "--max-memory-mb", "max_cpus": "--max-cpus", "max_call_timeout_s": "--max-call-timeout",
         "max_write_mb": "--max-write-mb", "max_log_mb": "--max-log-mb"}


@dataclass(frozen=True)
class Host:
    memory_mb: int
    cpus: int


@dataclass(frozen=True)
class Limits:
    """Resolved caps (every field set). ``max_cpus`` never exceeds the engine host's cores."""

    max_memory_mb: int
    max_cpus: float
    max_call_timeout_s: float
    max_write_mb: int = DEFAULT_WRITE_MB
    max_log_mb: int = DEFAULT_LOG_MB

    @property
    def write_bytes(self) -> int:
        return self.max_write_mb * 2**20


class ResourcesRejected(HarnessError):
    """A manifest asks for more than the caps allow; ``str()`` is one line starting ``resources:``."""


def local_host() -> Host:
    return Host(memory_mb=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
                cpus=os.cpu_count() or 1)


def docker_client():
    """The Docker Engine, or a one-line HarnessError saying how to start one."""
    try:
        import docker
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as e:  # no daemon, no permission, SDK missing
        raise HarnessError(f"no Docker Engine reachable ({type(e).__name__}); start one with "
                           f"`bash .ci/docker-setup.sh` (or `make docker`)") from None


@functools.lru_cache(maxsize=1)
def engine_host() -> Host:
    """The Docker Engine's host (where containers run), from ``docker info``."""
    info = docker_client().info()
    return Host(memory_mb=int(info["MemTotal"]) // 2**20, cpus=int(info["NCPU"]))


def resolve_limits(*layers: Optional[SandboxLimits], host: Optional[Host] = None) -> Limits:
    """The first value each layer sets (earlier layers win), else the default."""
    host = host or local_host()

    def pick(name: str, default):
        return next((getattr(l, name) for l in layers if l is not None and getattr(l, name) is not None), default)

    return Limits(max_memory_mb=pick("max_memory_mb", max(64, host.memory_mb // 2)),
                  max_cpus=min(pick("max_cpus", float(host.cpus)), float(host.cpus)),
                  max_call_timeout_s=pick("max_call_timeout_s", DEFAULT_CALL_TIMEOUT_CAP_S),
                  max_write_mb=pick("max_write_mb", DEFAULT_WRITE_MB),
                  max_log_mb=pick("max_log_mb", DEFAULT_LOG_MB))


def limits_for(runner: str, *layers: Optional[SandboxLimits]) -> Optional[Limits]:
    """The caps a run with ``runner`` enforces: resolved against the engine's host for ``docker``;
    for the other runners only the write limit applies (no caps on memory or CPUs: no sandbox)."""
    if runner == "docker":
        return resolve_limits(*layers, host=engine_host())
    if runner == "subprocess":
        return resolve_limits(*layers)
    return None


def check_resources(manifest: MethodManifest, limits: Limits) -> None:
    """Raise :class:`ResourcesRejected` (one line, every excess named) if ``manifest.resources``
    asks for more memory, CPUs or per-call time than ``limits`` allow."""
    res = manifest.resources
    over = []
    if res.memory_mb > limits.max_memory_mb:
        over.append(f"memory_mb {res.memory_mb} > {limits.max_memory_mb} MB ({FLAGS['max_memory_mb']})")
    if res.cpus > limits.max_cpus:
        over.append(f"cpus {res.cpus:g} > {limits.max_cpus:g} ({FLAGS['max_cpus']})")
    if res.call_timeout_s > limits.max_call_timeout_s:
        over.append(f"call_timeout_s {res.call_timeout_s:g} > {limits.max_call_timeout_s:g} s "
                    f"({FLAGS['max_call_timeout_s']})")
    if over:
        raise ResourcesRejected(f"resources: method {manifest.id!r} asks for more than the organizers allow: "
                                f"{'; '.join(over)}; raise a cap with the flag named or the track's sandbox:")


def fs_type(path: Path) -> Optional[str]:
    """The type of the file system holding ``path`` (``/proc/self/mountinfo``), or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target, best, kind = os.path.realpath(path), "", None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        mount = fields.split()[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, rest.split()[0]
    return kind


def tmpfs_root() -> Path:
    """A tmpfs directory for exchange directories that a method may write: what it writes there never
    reaches the disk and counts against the container's memory limit."""
    root = Path(os.environ.get(TMPFS_ENV, DEFAULT_TMPFS))
    if not root.is_dir() or fs_type(root) != "tmpfs":
        raise HarnessError(f"{root} is not a tmpfs directory: the docker runner keeps the exchange directory of "
                           f"a method declaring spec_version < 1.3 on a tmpfs; set {TMPFS_ENV} to one "
                           f"(or rebuild the method on spec >= 1.3)")
    return root
