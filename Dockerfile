# syntax=docker/dockerfile:1
# One image for both halves of jobq on Kubernetes:
#   the dispatcher:  jobq dispatcher          (the default command; settings from JOBQ_* env vars)
#   task pods:       jobq-runner              (the dispatcher sets the command and JOBQ_JOB_ID, ...)
# Not built or run in this repository's CI: the development machine has no container engine.
#   docker build -t jobq:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The extras installed: `server` runs the dispatcher and every built-in task but tf.train; nodes
# that run tf.train need an image built with TensorFlow (CPU, ~1.3 GB more):
#   docker build --build-arg EXTRAS=server,tf -t jobq-tf:0.1.0 .
ARG EXTRAS=server

# --- build: install jobq and its dependencies into a virtualenv --------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/jobq
WORKDIR /src
# Dependencies first, so source edits do not invalidate this layer.
COPY pyproject.toml README.md ./
# The server extra (dispatcher, task runner, ML tasks; README "Install"), and of the kubernetes
# extra only its client: the dev cluster's binaries stay out.
RUN mkdir -p jobq broker workers submitter chaos \
 && touch jobq/__init__.py broker/__init__.py workers/__init__.py submitter/__init__.py chaos/__init__.py \
 && /opt/jobq/bin/pip install ".[${EXTRAS}]" 'kubernetes_asyncio>=33' \
 && /opt/jobq/bin/pip uninstall -y jobq
# Not copied: devcluster/ (the dev cluster's Go-build and PKI tooling; `jobq dev-cluster` is then
# absent) and _chaosjobq/ (Chaos Toolkit's name for the extension; chaostoolkit is not installed).
COPY jobq ./jobq
COPY broker ./broker
COPY workers ./workers
COPY submitter ./submitter
COPY chaos ./chaos
RUN /opt/jobq/bin/pip install --no-deps . \
 && /opt/jobq/bin/python -m compileall -q /opt/jobq/lib \
 && /opt/jobq/bin/pip uninstall -y pip setuptools wheel

# --- runtime: the interpreter and the virtualenv, no compilers, no pip, not root ---------------
FROM ${PYTHON_IMAGE} AS runtime
RUN python -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true \
 && groupadd --system --gid 65532 jobq \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --shell /usr/sbin/nologin jobq
COPY --from=build /opt/jobq /opt/jobq
# The chart runs the dispatcher with a read-only root filesystem and an emptyDir at /tmp.
ENV PATH=/opt/jobq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    JOBQ_LOG_FORMAT=json
USER 65532:65532
WORKDIR /tmp
EXPOSE 8222
# Both console scripts are on PATH; task pods override the command with `jobq-runner`.
CMD ["jobq", "dispatcher"]
