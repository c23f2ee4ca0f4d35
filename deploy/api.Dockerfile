# syntax=docker/dockerfile:1
# The api image: the shared core and FastAPI, no torch: pyproject's [api] extra, and only the
# services and api packages, so an import of the trainer fails here instead of pulling torch in.
# Build from the repository root: docker build -f deploy/api.Dockerfile -t alignd-api .

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY api ./api
COPY cli ./cli
RUN /opt/venv/bin/pip install --no-cache-dir ".[api]"

FROM python:3.11-slim
# HF_HUB_CACHE: base models given by hub id are downloaded onto the artifacts volume (the root
# file system is read-only), so their copies in the store are hard links, not a second copy.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALIGND_HOST=0.0.0.0 \
    ALIGND_PORT=8000 \
    ALIGND_DATA_DIR=/var/lib/alignd \
    ALIGND_ARTIFACT_ROOT=/var/lib/alignd/artifacts \
    HF_HUB_CACHE=/var/lib/alignd/artifacts/hf-hub-cache
RUN useradd --system --uid 10001 --create-home --home-dir /home/alignd alignd \
    && mkdir -p /var/lib/alignd/artifacts \
    && chown -R alignd:alignd /var/lib/alignd
COPY --from=build /opt/venv /opt/venv
COPY deploy/healthcheck.py /opt/alignd/healthcheck.py
USER 10001:10001
WORKDIR /home/alignd
VOLUME ["/var/lib/alignd/artifacts"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/alignd/healthcheck.py", "http://127.0.0.1:8000/readyz"]
ENTRYPOINT ["alignd"]
CMD ["serve", "api"]
