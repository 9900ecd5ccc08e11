# suitkit serve in a container (docs/operations.md "Packaging"). Two stages: the wheel is built
# (with a C compiler for suitkit's strict CBOR extension) in the first; the final image has
# Python, suitkit and its dependencies only: no compiler, no pip cache, a user without rights.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG SUITKIT_VERSION=0.1.0

FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG SUITKIT_VERSION
LABEL org.opencontainers.image.title="suitkit" \
      org.opencontainers.image.description="SUIT firmware server, status tracker and dashboard" \
      org.opencontainers.image.licenses="BSD-3-Clause"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "suitkit==${SUITKIT_VERSION}" \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 suitkit \
    && useradd --system --uid 10001 --gid suitkit --home-dir /var/lib/suitkit \
       --shell /usr/sbin/nologin suitkit \
    && mkdir -p /var/lib/suitkit /etc/suitkit \
    && chown suitkit:suitkit /var/lib/suitkit
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SUITKIT_DATA=/var/lib/suitkit \
    SUITKIT_HOST=0.0.0.0 \
    SUITKIT_PORT=8080 \
    SUITKIT_LOG_FORMAT=json
VOLUME ["/var/lib/suitkit"]
USER 10001:10001
WORKDIR /var/lib/suitkit
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["suitkit", "serve"]
CMD ["--config", "/etc/suitkit/suitkit.toml"]
