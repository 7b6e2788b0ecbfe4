# syntax=docker/dockerfile:1
# One image for every Veritrace process kind: `api`, `dicom`, `worker -Q gpu|io`, `serve`, `db upgrade`.
#
#   CPU image:  docker build -t veritrace:0.1.0 .
#   GPU image:  docker build -t veritrace:0.1.0-gpu \
#                 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The CUDA torch wheels carry their own CUDA runtime libraries, so the GPU image needs no CUDA base image;
# the NVIDIA container runtime on the node supplies the driver. Model weights never go into the image:
# the hospital mounts its model directory and points VERITRACE_MODEL_PATH at it.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Which torch build goes into the venv: the CPU index by default, a CUDA index for GPU images.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional extras of the veritrace distribution, e.g. "gpu" (flash-attn; needs a CUDA toolchain to build).
ARG VERITRACE_EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the chosen index, so the resolver below keeps it instead of pulling another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds ./cds
COPY integrations ./integrations
COPY model ./model
COPY audit ./audit
# The project itself (its pins live in pyproject.toml), not a registry package: DL3013 does not apply.
# hadolint ignore=DL3013
RUN if [ -n "${VERITRACE_EXTRAS}" ]; then target=".[${VERITRACE_EXTRAS}]"; else target="."; fi \
    && pip install "${target}" \
    && python -c "import torch; print('torch', torch.__version__)" \
    && veritrace --help > /dev/null

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERITRACE_UID=10001

LABEL org.opencontainers.image.title="veritrace" \
      org.opencontainers.image.description="Veritrace clinical decision support: CDS Hooks, DICOM, VLM workers, audit ledger"

# tini as PID 1 reaps the children `serve` starts and forwards SIGTERM, so `docker stop` drains cleanly.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid "${VERITRACE_UID}" veritrace \
    && useradd --system --uid "${VERITRACE_UID}" --gid veritrace --home-dir /var/lib/veritrace \
       --shell /usr/sbin/nologin veritrace \
    && install -d -o veritrace -g veritrace -m 0700 \
       /var/lib/veritrace /var/lib/veritrace/spool /var/lib/veritrace/anchor /var/lib/veritrace/keys

COPY --from=builder /opt/venv /opt/venv
COPY deploy/container/healthcheck.py /opt/veritrace/healthcheck.py

# Containers listen on all interfaces; the embedded defaults (127.0.0.1) are for a bare one-box install.
# The model is always a local directory: never reach for a hub at run time. Caches go to /tmp so that the
# root filesystem can be mounted read-only. Named volumes mounted over spool/ and anchor/ copy the
# ownership of the directories made above, so the non-root user can write them.
ENV PATH=/opt/venv/bin:$PATH \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VERITRACE_HOME=/var/lib/veritrace \
    VERITRACE_API_HOST=0.0.0.0 \
    VERITRACE_API_PORT=8080 \
    VERITRACE_DICOM_HOST=0.0.0.0 \
    VERITRACE_DICOM_PORT=11112

USER ${VERITRACE_UID}:${VERITRACE_UID}
WORKDIR /var/lib/veritrace
EXPOSE 8080 11112

# Probes whichever process this container runs (api: GET /healthz; dicom: C-ECHO; worker: Celery ping).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/veritrace/healthcheck.py"]

ENTRYPOINT ["tini", "--", "veritrace"]
CMD ["api"]
