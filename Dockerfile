# syntax=docker/dockerfile:1
#
# Images of the SATs service. Build one target at a time, or let docker-compose.yml build both:
#
#   docker build --target gateway -t sats-gateway .   # HTTP gateway: python:3.11-slim, no torch
#   docker build --target worker  -t sats-worker  .   # GPU worker: CUDA base image, CUDA torch build
#
# docs/deployment.md explains how the images are run.

# Base images, pinned by tag. Pin them by digest (IMAGE:TAG@sha256:...) for builds that must
# be reproducible.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The torch CUDA wheels bring their own CUDA runtime, cuBLAS and cuDNN as pip packages, so the
# worker needs only the CUDA "base" image: its NVIDIA_* variables tell the NVIDIA Container
# Toolkit to mount the host driver, and it requires a driver for CUDA 12.6 (R560 or newer).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04
# Same version as TORCH_SPEC in the Makefile (a test checks this). PyTorch 2.13 publishes CUDA
# 12.6, 13.0 and 13.2 builds. cu126 runs on GPUs from Maxwell to Hopper. For Blackwell GPUs
# build with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 and a CUDA 13.0 base image.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

# ---------------------------------------------------------------------------------------------
# wheel: the sats package (app, worker, model and the shipped weights) as one pure-Python wheel.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY model ./model
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# gateway-build: a virtual environment with the gateway's requirements and the sats wheel.
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/gateway_requirements.py ./deploy/
# pyproject.toml lists torch, so `pip install .` would pull it in. Install instead
# pyproject.toml's dependencies less the worker-only ones, then the wheel without dependencies.
RUN python -m venv /opt/venv \
 && python deploy/gateway_requirements.py pyproject.toml > /tmp/gateway-requirements.txt \
 && pip install --requirement /tmp/gateway-requirements.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/sats-*.whl
# Fail the build, not the first request, when a gateway dependency is missing or torch got in.
RUN python -c "import app.main" \
 && python -c "import importlib.util, sys; sys.exit('torch is installed in the gateway image' if importlib.util.find_spec('torch') else 0)"

# ---------------------------------------------------------------------------------------------
# gateway: FastAPI behind uvicorn on port 8000, run as the unprivileged user "sats".
FROM ${PYTHON_IMAGE} AS gateway
# The gateway and the workers share the data volume, so both images use uid and gid 10001.
RUN groupadd --system --gid 10001 sats \
 && useradd --system --uid 10001 --gid sats --create-home --home-dir /home/sats --shell /usr/sbin/nologin sats \
 && mkdir -p /data \
 && chown sats:sats /data
COPY --from=gateway-build /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SATS_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/sats
EXPOSE 8000
# Liveness only: /readyz also needs Redis and a live worker, which the gateway does not control.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# worker: one Celery worker that runs one job at a time on the GPU, as the user "sats".
FROM ${CUDA_IMAGE} AS worker
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python is 3.12, which pyproject.toml's requires-python (>=3.11) allows.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sats \
 && useradd --system --uid 10001 --gid sats --create-home --home-dir /home/sats --shell /usr/sbin/nologin sats \
 && mkdir -p /data \
 && chown sats:sats /data
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# torch comes first, from the CUDA wheel index: the sats wheel's "torch>=2.4,<2.14" is then
# already met, and pip keeps the CUDA build instead of fetching the default build from PyPI.
RUN python3 -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install /wheels/sats-*.whl \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else f'torch {torch.__version__} is not a CUDA build')"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SATS_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/sats
# The worker answers pings from its main process, so a job that is running does not fail this check.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A worker.celery_app:celery_app inspect ping --destination \"celery@${HOSTNAME}\" --timeout 10 > /dev/null"]
# Concurrency 1 and prefetch 1: a GPU worker takes one job at a time and reserves no second
# job that another worker could run meanwhile. SATS_QUEUE names the queue (default "sats").
CMD ["sh", "-c", "exec celery -A worker.celery_app:celery_app worker --queues \"${SATS_QUEUE:-sats}\" --concurrency 1 --prefetch-multiplier 1 --loglevel INFO"]
