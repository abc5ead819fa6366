# syntax=docker/dockerfile:1
# Images of the human-parsing service (docs/deployment.md). From the repository root:
#
#   docker build --target app -t m2fp-app .          the app, GPU (CUDA base, CUDA torch wheels)
#   docker build --target app -t m2fp-app:cpu \
#     --build-arg BASE_IMAGE=debian:bookworm-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .       the app, CPU only
#   docker build --target edge -t m2fp-edge .        nginx with this repository's configuration
#
# Both run as non-root users with a read-only root filesystem (docker-compose.yml): the app
# needs no writable path but /dev/shm (gunicorn's worker heartbeat), nginx a small tmpfs at
# /run/nginx for its rendered configuration and pid file.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# -- Python on the chosen base (CUDA or plain Debian) --------------------------------------------
FROM ${BASE_IMAGE} AS python-base
ENV DEBIAN_FRONTEND=noninteractive
# The base differs between the GPU and CPU images, so package versions are the base's own.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libmagic1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# -- the virtualenv ------------------------------------------------------------------------------
FROM python-base AS build
ARG TORCH_INDEX_URL
COPY requirements.txt /tmp/requirements.txt
# torch first from the index of the wanted build (CUDA or CPU); requirements.txt's torch==
# pin is then already satisfied.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# -- the app: gunicorn + Flask + the model code ------------------------------------------------
FROM python-base AS app
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin m2fp
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . /app
RUN /opt/venv/bin/python -m compileall -q /app
# Nothing is written at run time: no bytecode, no CUDA kernel cache, no CUDA probe in the
# gunicorn master (serving-facts.md section 3).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_CACHE_DISABLE=1 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 \
    M2FP_MODEL_DIR=/models/m2fp \
    M2FP_TRUSTED_PROXIES=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", \
         "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "-b", "0.0.0.0:8000", "app:create_app()"]

# -- the edge: Debian's nginx (the version the tests run) and the config renderer ------------------
FROM debian:bookworm-slim AS edge-files
# The renderer and the stdlib-only modules it imports: the settings (the body cap follows
# M2FP_MAX_UPLOAD_MB) and what nginx and the app agree on (errors, body cap, CSP).
COPY nginx /opt/m2fp/nginx
COPY settings.py http_contract.py /opt/m2fp/
# settings.py checks M2FP_DEVICE/M2FP_PRECISION with m2fp/device.py (plain Python, no torch)
COPY m2fp/__init__.py m2fp/device.py /opt/m2fp/m2fp/
COPY . /tmp/context
RUN mkdir -p /opt/m2fp/static \
    && if [ -d /tmp/context/static ]; then cp -R /tmp/context/static/. /opt/m2fp/static/; fi \
    && chmod -R a+rX,go-w /opt/m2fp

FROM debian:bookworm-slim AS edge
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --user-group --home-dir /nonexistent \
        --shell /usr/sbin/nologin m2fp-edge
COPY --from=edge-files /opt/m2fp /opt/m2fp
ENV M2FP_UPSTREAMS=app:8000 \
    M2FP_PUBLIC_HTTPS_PORT=443 \
    M2FP_TLS_CERT=/etc/m2fp/tls/server.pem \
    M2FP_TLS_KEY=/etc/m2fp/tls/server.key
USER 10002:10002
EXPOSE 8443 8080
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8443), 4).close()"]
ENTRYPOINT ["/opt/m2fp/nginx/docker-entrypoint.sh"]
