# voucherify-relay container image. Build and run: docs/deploy.md ("Docker").
#
#   docker build -t voucherify-relay .                                   # python:3.12-slim
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim -t voucherify-relay .
#   docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple -t voucherify-relay .
#
# Any Debian-based official Python image (3.11+) works as the base; both stages must use
# the same one, because the virtualenv copied between them links to its interpreter.
# Dependencies come from the hashed lock (requirements/runtime.txt, made by scripts/lock);
# `bash scripts/image-test` builds and runs this file without a Docker engine.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS builder
# Another package index (a mirror or a proxy); the hashes still have to match. Builder stage only.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt
# The build backend in its own venv, hashed too: the runtime venv gets the relay and its locked dependencies only.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="voucherify-relay" \
      org.opencontainers.image.description="Webhooks and Slack messages for Voucherify async actions"
COPY --from=builder /opt/venv /opt/venv
# A fixed numeric UID (no passwd entry needed), owner of the state volume.
RUN mkdir -p /var/lib/voucherify-relay \
    && chown 10001:10001 /var/lib/voucherify-relay \
    && chmod 0700 /var/lib/voucherify-relay
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_STATE_URL=sqlite:////var/lib/voucherify-relay/relay.db \
    RELAY_HTTP_LISTEN=0.0.0.0:9464 \
    RELAY_LOG_FORMAT=json
VOLUME ["/var/lib/voucherify-relay"]
EXPOSE 9464
USER 10001:10001
# Ready means a poll succeeded recently (GET /readyz answers 200). Python's urllib, not curl:
# nothing is added to the image. The port follows RELAY_HTTP_LISTEN.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RELAY_HTTP_LISTEN', ':9464').rpartition(':')[2]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["voucherify-relay"]
CMD ["run"]
