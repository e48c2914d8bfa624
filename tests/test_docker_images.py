"""Docker end-to-end checks of the method base image (pbench/method-base).

Needs a running Docker Engine (``.ci/docker-setup.sh`` starts one).
- No engine and ``CI`` unset (a developer's laptop): the module is skipped.
- No engine and ``CI`` set: every test fails - CI must have started one.

The base image is built by ``docker/build-images.sh --base-only`` when it is
missing (offline base via debootstrap when no registry answers: a few minutes).
Containers run with the same confinement the ``docker`` runner uses: no
network, read-only root, tmpfs /tmp, all capabilities dropped,
no-new-privileges, memory and pids limits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))


def _spec_version() -> str:
    text = (ROOT / "specs" / "version.py").read_text()
    m = re.search(r"""^SPEC_VERSION\s*=\s*["']([^"']+)["']""", text, re.M)
    return m.group(1) if m else "1"


SPEC_VERSION = _spec_version()
BASE_IMAGE = f"pbench/method-base:{SPEC_VERSION.split('.')[0]}"
TORCH_VERSION = "2.13.0+cpu"
METHOD_UID = 10001

# The runner's confinement (kwargs of docker's containers.create).
HARDENED = dict(
    network_mode="none",
    read_only=True,
    tmpfs={"/tmp": "rw,size=256m"},
    cap_drop=["ALL"],
    security_opt=["no-new-privileges"],
    mem_limit="2g",
    pids_limit=256,
)


def _engine_problem() -> str | None:
    """None when an engine answers, else why not."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - depends on the venv
        return f"the docker Python SDK is not installed ({exc})"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.close()
    except Exception as exc:  # DockerException, ConnectionError, ...
        return f"no Docker Engine reachable ({type(exc).__name__}: {exc})"
    return None


_PROBLEM = _engine_problem()
if _PROBLEM and not IN_CI:
    pytest.skip(
        f"{_PROBLEM}; start one with `.ci/docker-setup.sh` "
        "(in CI, with CI set, these tests fail instead of skipping)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def client():
    if _PROBLEM:
        pytest.fail(f"CI is set but {_PROBLEM}: .ci/docker-setup.sh must run first", pytrace=False)
    import docker

    c = docker.from_env(timeout=600)
    yield c
    c.close()


@pytest.fixture(scope="module")
def base_image(client):
    """The method base image; built (offline if need be) when missing."""
    import docker

    try:
        return client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    proc = subprocess.run(
        [str(ROOT / "docker" / "build-images.sh"), "--base-only"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, f"build-images.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return client.images.get(BASE_IMAGE)


def run_in(client, image, code: str, *, timeout: float = 120, **overrides):
    """Run `python -c code` in a confined container; return (exit code, stdout, stderr, attrs)."""
    opts = {**HARDENED, **overrides}
    container = client.containers.create(
        image.id if hasattr(image, "id") else image,
        entrypoint=["/opt/venv/bin/python", "-c", code],
        detach=True,
        **opts,
    )
    try:
        container.start()
        status = container.wait(timeout=timeout)
        out = container.logs(stdout=True, stderr=False).decode()
        err = container.logs(stdout=False, stderr=True).decode()
        container.reload()
        return status["StatusCode"], out, err, container.attrs
    finally:
        container.remove(force=True)


# --------------------------------------------------------------------------- image


def test_base_image_exists_and_is_configured(base_image):
    cfg = base_image.attrs["Config"]
    assert cfg["Entrypoint"] == ["/opt/venv/bin/python", "-m", "specs.sdk"]
    assert cfg["User"] == "method"
    assert cfg["WorkingDir"] == "/method"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PYTHONPATH"] == "/opt/pbench"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert (cfg.get("Labels") or {}).get("pbench.spec_version") == SPEC_VERSION
    assert f"{BASE_IMAGE.split(':')[0]}:{SPEC_VERSION}" in base_image.tags


def test_cli_run_imports_torch_pydantic_safetensors_specs(base_image):
    """The exact `docker run` line of the runner's confinement, through the CLI."""
    if shutil.which("docker") is None:
        pytest.skip("docker CLI not on PATH")
    t0 = time.monotonic()
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", "2g",
         "--pids-limit", "256", "--entrypoint", "/opt/venv/bin/python", BASE_IMAGE,
         "-c", "import torch, pydantic, safetensors, specs; print(torch.__version__)"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == TORCH_VERSION
    assert time.monotonic() - t0 < 60


def test_sdk_run_versions_and_spec(client, base_image):
    code, out, err, _ = run_in(client, base_image, (
        "import json, numpy, pydantic, safetensors, torch, specs\n"
        "from specs.version import SPEC_VERSION\n"
        "x = torch.ones(4, 4) @ torch.ones(4, 4)\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(),"
        " 'pydantic': pydantic.VERSION, 'spec': SPEC_VERSION, 'sum': float(x.sum()),"
        " 'specs_file': specs.__file__}))"
    ))
    assert code == 0, err
    info = json.loads(out)
    assert info["torch"] == TORCH_VERSION
    assert info["cuda"] is False
    assert info["pydantic"].startswith("2.")
    assert info["spec"] == SPEC_VERSION
    assert info["sum"] == 64.0
    assert info["specs_file"].startswith("/opt/pbench/specs/")


# --------------------------------------------------------------------- confinement


def test_network_none_socket_connect_fails(client, base_image):
    code, out, err, attrs = run_in(client, base_image, (
        "import errno, os, socket\n"
        "print(sorted(os.listdir('/sys/class/net')))\n"
        "s = socket.socket(); s.settimeout(5)\n"
        "try:\n"
        "    s.connect(('1.1.1.1', 53)); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('errno', errno.errorcode.get(e.errno, e.errno))\n"
    ))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "['lo']"
    assert lines[1] == "errno ENETUNREACH"
    assert attrs["HostConfig"]["NetworkMode"] == "none"


def test_runs_as_uid_10001_without_capabilities(client, base_image):
    code, out, err, _ = run_in(client, base_image, (
        "import os\n"
        "st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print(os.getuid(), os.getgid(), os.geteuid(), os.getcwd())\n"
        "print(st['CapEff'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip())\n"
    ))
    assert code == 0, err
    ids, caps = out.splitlines()
    assert ids == f"{METHOD_UID} {METHOD_UID} {METHOD_UID} /method"
    cap_eff, cap_bnd, nnp = caps.split()
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0
    assert nnp == "1"


def test_root_filesystem_is_read_only_tmp_is_writable(client, base_image):
    code, out, err, _ = run_in(client, base_image, (
        "import errno\n"
        "for path in ('/opt/x', '/opt/venv/x', '/method/x', '/x', '/tmp/x'):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); print(path, 'ok')\n"
        "    except OSError as e:\n"
        "        print(path, errno.errorcode[e.errno])\n"
    ))
    assert code == 0, err
    result = dict(line.split() for line in out.splitlines())
    for path in ("/opt/x", "/opt/venv/x", "/method/x", "/x"):
        assert result[path] == "EROFS", result
    assert result["/tmp/x"] == "ok"


def test_venv_not_writable_by_method_even_without_read_only(client, base_image):
    """Defense in depth: the venv and specs belong to root."""
    code, out, err, _ = run_in(client, base_image, (
        "import errno\n"
        "for path in ('/opt/venv/bin/x', '/opt/pbench/specs/x'):\n"
        "    try:\n"
        "        open(path, 'w'); print(path, 'ok')\n"
        "    except OSError as e:\n"
        "        print(path, errno.errorcode[e.errno])\n"
    ), read_only=False)
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines()] == ["EACCES", "EACCES"]


def test_memory_and_pids_limits_applied(client, base_image):
    code, out, err, attrs = run_in(client, base_image, "print('ok')")
    assert code == 0, err
    host = attrs["HostConfig"]
    assert host["Memory"] == 2 * 1024**3
    assert host["PidsLimit"] == 256
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]


# -------------------------------------------------------------------- method image


def test_method_image_builds_from_example(client, base_image, tmp_path):
    """docker/build-images.sh turns a method folder into pbench/method-<folder>:<version>."""
    import docker

    method = tmp_path / "dockertestmethod"
    method.mkdir()
    shutil.copy(ROOT / "docker" / "method.Dockerfile.example", method / "Dockerfile")
    (method / "manifest.json").write_text(json.dumps({"id": "dockertestmethod", "version": "0.0.1"}))
    (method / "method.py").write_text("NAME = 'dockertestmethod'\n")
    tag = "pbench/method-dockertestmethod:0.0.1"
    try:
        proc = subprocess.run(
            [str(ROOT / "docker" / "build-images.sh"), str(method)],
            cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        assert f"{tag} built" in proc.stdout
        image = client.images.get(tag)
        assert image.attrs["Config"]["Entrypoint"] == base_image.attrs["Config"]["Entrypoint"]
        assert image.labels["pbench.method"] == "dockertestmethod"
        assert image.labels["pbench.method_version"] == "0.0.1"
        code, out, err, _ = run_in(client, image, (
            "import os, method\n"
            "print(method.NAME, os.stat('/method/method.py').st_uid)\n"
        ))
        assert code == 0, err
        assert out.split() == ["dockertestmethod", str(METHOD_UID)]
    finally:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
