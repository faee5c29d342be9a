# syntax=docker/dockerfile:1
#
# shadowserve images (docs/deploy.md). Two targets:
#   model    (the default)  `serve` on a CUDA PyTorch base, a model repository baked in at /models
#   sidecar                 the sidecar, the injector and the drift job: Python, no torch
#
#   docker build -t shadowserve-model .
#   docker build --target sidecar -t shadowserve-sidecar .
#   docker build --build-arg MODEL_REPOSITORY=path/to/models -t my-model .
#
# Dependencies are pinned in requirements/runtime.txt (torch comes with the PyTorch base:
# its tag picks the torch and CUDA versions). Builder stages install into a virtual
# environment at /opt/shadowserve; the final stages copy it and nothing else.

ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- the project's wheel, built once for both images ------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=/src/requirements/build.txt
WORKDIR /src
COPY requirements/build.txt requirements/build.txt
COPY pyproject.toml README.md ./
COPY inference_protocol inference_protocol
COPY serving serving
COPY sidecar sidecar
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- sidecar: dependencies without torch ------------------------------------------------
FROM ${PYTHON_IMAGE} AS sidecar-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.txt /tmp/runtime.txt
RUN python -m venv /opt/shadowserve \
    && /opt/shadowserve/bin/pip install --no-cache-dir --requirement /tmp/runtime.txt
COPY --from=wheel /wheels /wheels
# --no-deps: the project requires torch, which the sidecar never imports.
RUN /opt/shadowserve/bin/pip install --no-cache-dir --no-deps /wheels/shadowserve-*.whl \
    && /opt/shadowserve/bin/python -c "import sidecar.app, sidecar.injector, sidecar.drift.cli"

FROM ${PYTHON_IMAGE} AS sidecar
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="shadowserve-sidecar" \
      org.opencontainers.image.description="shadowserve traffic-mirroring sidecar, sidecar injector and drift job" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 shadowserve \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /home/shadowserve --create-home \
       --shell /usr/sbin/nologin shadowserve
COPY --from=sidecar-build /opt/shadowserve /opt/shadowserve
ENV PATH=/opt/shadowserve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081 9090
# /healthz is on the metrics port. Kubernetes ignores HEALTHCHECK: k8s/ sets probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIDECAR_METRICS_PORT', '9090'), timeout=4)"]
ENTRYPOINT ["sidecar"]

# ---- model: dependencies beside the base image's torch ----------------------------------
FROM ${PYTORCH_IMAGE} AS model-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.txt /tmp/runtime.txt
# --system-site-packages: torch (and its CUDA libraries) stay the base image's.
RUN python -m venv --system-site-packages /opt/shadowserve \
    && /opt/shadowserve/bin/pip install --no-cache-dir --requirement /tmp/runtime.txt
COPY --from=wheel /wheels /wheels
# The import is the check that the base image's torch and the pinned packages work together.
RUN /opt/shadowserve/bin/pip install --no-cache-dir --no-deps /wheels/shadowserve-*.whl \
    && /opt/shadowserve/bin/python -c "import torch, serving.app, sidecar.app"

FROM ${PYTORCH_IMAGE} AS model
ARG VERSION=0.1.0
ARG REVISION=unknown
# A directory of the build context holding a model repository (Triton's layout).
ARG MODEL_REPOSITORY=examples/models
LABEL org.opencontainers.image.title="shadowserve-model" \
      org.opencontainers.image.description="shadowserve model server (KServe v2) with a baked-in model repository" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.shadowserve.model-repository="/models"
RUN groupadd --system --gid 10001 shadowserve \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /home/shadowserve --create-home \
       --shell /usr/sbin/nologin shadowserve
COPY --from=model-build /opt/shadowserve /opt/shadowserve
# Owned by root: the server (user 10001) reads the models and cannot change them.
COPY ${MODEL_REPOSITORY} /models
ENV PATH=/opt/shadowserve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SERVING_MODEL_REPOSITORY=/models
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('SERVING_HTTP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["serve"]
