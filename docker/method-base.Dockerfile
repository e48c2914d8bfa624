# PruningBench method base image: Python 3.11 + CPU torch + pydantic +
# safetensors + numpy in /opt/venv, the spec package in /opt/pbench/specs,
# a non-root user `method` (uid 10001), entrypoint = the method-side server.
#
# Build context: the repository root (docker/build-images.sh sends only
# docker/, specs/ and docker/wheels/ as a tar stream). Build with:
#   docker build -f docker/method-base.Dockerfile \
#       [--build-arg BASE_IMAGE=pbench/debian-python:bookworm] \
#       -t pbench/method-base:1 .
# The wheelhouse docker/wheels/ must exist (build-images.sh downloads it):
# nothing is fetched from the network during the build (works with
# `--network none`).
#
# BASE_IMAGE: any Debian-like image with python3 (3.11) and the venv module:
#   python:3.11-slim                 (default; needs a registry)
#   pbench/debian-python:bookworm    (offline: docker/build-offline-base.sh)
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE}

# Wheelhouse -> venv, installed offline. The wheels stay in this COPY layer
# (~213 MB): the classic builder has no `RUN --mount`, and a multi-stage
# build that copies only /opt/venv (1.13 GB instead of 1.35 GB) took 115 s
# instead of 46 s here (copying ~960 MB between stages on 2 cores).
COPY docker/wheels /tmp/wheels
COPY docker/method-base.requirements.txt /tmp/requirements.txt
# `python3 -m venv`: /usr/local/bin/python3 in python:*-slim,
# /usr/bin/python3 in the debootstrap image. PIP_CONFIG_FILE=/dev/null: no
# host or base-image pip configuration applies.
RUN python3 -m venv /opt/venv \
 && PIP_CONFIG_FILE=/dev/null /opt/venv/bin/python -m pip install \
        --no-index --find-links /tmp/wheels --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location \
        -r /tmp/requirements.txt \
 && /opt/venv/bin/python -c "import torch, pydantic, safetensors, numpy; print('torch', torch.__version__)" \
 && rm -rf /tmp/wheels /tmp/requirements.txt

# Non-root user; its home is the (read-only) method folder. Caches go to /tmp,
# the only writable place when the runner uses --read-only --tmpfs /tmp.
RUN groupadd --gid 10001 method \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /method \
        --shell /usr/sbin/nologin method \
 && mkdir -p /method

# specs/ changes most often: copied last so the layers above stay cached.
COPY specs /opt/pbench/specs
# Precompile (root-owned, read-only at run time; nothing is written later).
RUN /opt/venv/bin/python -m compileall -q /opt/pbench/specs

ARG SPEC_VERSION=unknown
LABEL org.opencontainers.image.title="pbench/method-base" \
      org.opencontainers.image.description="PruningBench method base image" \
      pbench.spec_version="${SPEC_VERSION}"
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/pbench \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    PBENCH_SPEC_VERSION=${SPEC_VERSION}

USER method
WORKDIR /method
ENTRYPOINT ["/opt/venv/bin/python", "-m", "specs.sdk"]
