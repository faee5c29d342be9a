# syntax=docker/dockerfile:1
#
# shadowserve images (docs/deploy.md). Two targets:
#   model    (the default)  `serve` on a CUDA PyTorch base, a model repository baked in at /models
#   sidecar                 the sidecar, the injector and the drift job: Python, no torch
#
#   docker build -t shadowserve-model .
#   docker build --target sidecar -t shadowserve-sidecar .
#   docker build --build-arg MODEL_REPOSITORY=path/to/models -t my-model .
#   docker build --build-arg MODEL_URI=models:/classifier@champion --build-arg MLFLOW_TRACKING_URI=https://mlflow.example \
#     $(shadowserve-registry resolve models:/classifier@champion --format build-args) -t my-model .
#
# Dependencies are pinned in requirements/runtime.txt, for the registry client in
# requirements/registry.txt, and for the model image's ONNX Runtime and S3 in requirements/model.txt (torch comes with the PyTorch base: its tag picks the torch and
# CUDA versions). Builder stages install into a virtual environment at /opt/shadowserve; the
# final stages copy it and nothing else.

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
COPY model_registry model_registry
COPY triton_python_backend_utils triton_python_backend_utils
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- sidecar: dependencies without torch ------------------------------------------------
FROM ${PYTHON_IMAGE} AS sidecar-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.txt requirements/registry.txt /tmp/
# registry.txt: the sidecar writes canary decisions to the model registry.
RUN python -m venv /opt/shadowserve \
    && /opt/shadowserve/bin/pip install --no-cache-dir --requirement /tmp/runtime.txt --requirement /tmp/registry.txt
COPY --from=wheel /wheels /wheels
# --no-deps: the project requires torch, which the sidecar never imports.
RUN /opt/shadowserve/bin/pip install --no-cache-dir --no-deps /wheels/shadowserve-*.whl \
    && /opt/shadowserve/bin/python -c "import sidecar.app, sidecar.injector, sidecar.drift.cli, model_registry.cli, mlflow"

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
COPY requirements/runtime.txt requirements/registry.txt requirements/model.txt /tmp/
# --system-site-packages: torch (and its CUDA libraries) stay the base image's.
# registry.txt: serve --model-source, and the pull of the model stage below.
# model.txt: ONNX models (onnxruntime-gpu: the CUDA execution provider) and s3:// repositories.
RUN python -m venv --system-site-packages /opt/shadowserve \
    && /opt/shadowserve/bin/pip install --no-cache-dir --requirement /tmp/runtime.txt --requirement /tmp/registry.txt \
       --requirement /tmp/model.txt
COPY --from=wheel /wheels /wheels
# The import is the check that the base image's torch and the pinned packages work together.
RUN /opt/shadowserve/bin/pip install --no-cache-dir --no-deps /wheels/shadowserve-*.whl \
    && /opt/shadowserve/bin/python -c "import torch, serving.app, sidecar.app, model_registry.cli, mlflow, onnxruntime, s3fs, triton_python_backend_utils"

# ---- the model repository: the build context's, or pulled from the model registry ------
# Without MODEL_URI: MODEL_REPOSITORY, a directory of the build context, as it is. With it:
# `shadowserve-registry pull`, every file verified against the version's manifest, and the
# build fails unless what it pulled is the MODEL_VERSION and MODEL_MANIFEST_SHA256 given
# (printed by `shadowserve-registry resolve URI --format build-args`): the model stage's
# labels say what the image holds, and an alias that moved since the resolve fails the build.
# Credentials come as BuildKit secrets (never in a layer or the image's history):
#   --secret id=mlflow-token,env=MLFLOW_TRACKING_TOKEN, or mlflow-username and mlflow-password.
FROM model-build AS models
ARG MODEL_REPOSITORY=examples/models
ARG MODEL_URI=""
ARG MODEL_VERSION=""
ARG MODEL_MANIFEST_SHA256=""
ARG MLFLOW_TRACKING_URI=""
ENV PATH=/opt/shadowserve/bin:$PATH
COPY ${MODEL_REPOSITORY} /context
RUN --mount=type=secret,id=mlflow-token,env=MLFLOW_TRACKING_TOKEN \
    --mount=type=secret,id=mlflow-username,env=MLFLOW_TRACKING_USERNAME \
    --mount=type=secret,id=mlflow-password,env=MLFLOW_TRACKING_PASSWORD \
    set -eu; \
    if [ -z "$MODEL_URI" ]; then \
        if [ -n "$MODEL_VERSION$MODEL_MANIFEST_SHA256" ]; then \
            echo "error: MODEL_VERSION and MODEL_MANIFEST_SHA256 label a model pulled from the registry: give MODEL_URI too" >&2; \
            exit 1; \
        fi; \
        mv /context /models; \
        exit 0; \
    fi; \
    if [ -z "$MODEL_VERSION" ] || [ -z "$MODEL_MANIFEST_SHA256" ]; then \
        echo "error: MODEL_URI needs MODEL_VERSION and MODEL_MANIFEST_SHA256 for its labels: add \$(shadowserve-registry resolve $MODEL_URI --format build-args) to docker build" >&2; \
        exit 1; \
    fi; \
    if [ -z "$MLFLOW_TRACKING_URI" ]; then \
        echo "error: MODEL_URI needs the registry: --build-arg MLFLOW_TRACKING_URI=https://mlflow.example (a team's mlflow server)" >&2; \
        exit 1; \
    fi; \
    shadowserve-registry --registry-uri "$MLFLOW_TRACKING_URI" pull "$MODEL_URI" --dest /models; \
    python -c 'import json, os, sys; (p,) = json.load(open("/models/.shadowserve-pull.json")); e = os.environ; got = (str(p["version"]), p["manifest_sha256"]); sys.exit(0 if got == (e["MODEL_VERSION"], e["MODEL_MANIFEST_SHA256"]) else "error: %s is version %s (manifest sha256 %s), not the MODEL_VERSION=%s MODEL_MANIFEST_SHA256=%s given (the alias moved?): resolve it again and rebuild" % (e["MODEL_URI"], got[0], got[1], e["MODEL_VERSION"], e["MODEL_MANIFEST_SHA256"]))'; \
    chmod -R a+rX,go-w /models; \
    rm -rf /context

FROM ${PYTORCH_IMAGE} AS model
ARG VERSION=0.1.0
ARG REVISION=unknown
# Empty unless the model came from the registry (the models stage checked them against it).
ARG MODEL_URI=""
ARG MODEL_VERSION=""
ARG MODEL_MANIFEST_SHA256=""
LABEL org.opencontainers.image.title="shadowserve-model" \
      org.opencontainers.image.description="shadowserve model server (KServe v2) with a baked-in model repository" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.shadowserve.model-repository="/models" \
      io.shadowserve.model-uri="${MODEL_URI}" \
      io.shadowserve.model-version="${MODEL_VERSION}" \
      io.shadowserve.model-manifest-sha256="${MODEL_MANIFEST_SHA256}"
RUN groupadd --system --gid 10001 shadowserve \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /home/shadowserve --create-home \
       --shell /usr/sbin/nologin shadowserve
COPY --from=model-build /opt/shadowserve /opt/shadowserve
# Owned by root: the server (user 10001) reads the models and cannot change them.
COPY --from=models --chown=0:0 /models /models
ENV PATH=/opt/shadowserve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SERVING_MODEL_REPOSITORY=/models
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('SERVING_HTTP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["serve"]
