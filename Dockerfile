# certainty-gateway: the OpenAI-compatible gateway with the local Granite engine.
#
#   docker build -t certainty-gateway .
#   docker compose up            (gateway + Redis; see docker-compose.yml)
#
# Two stages: `build` installs the lock and the package into a virtual environment; the runtime
# stage copies only that environment onto a fresh slim image (no pip cache, no build files).
#
# torch==2.13.0 from PyPI is, on linux/x86_64, the CUDA 13.0 build (it pulls NVIDIA's CUDA
# wheels, a few GB, which the lock does not list; it runs on a CPU too). For a CPU-only image
# (about 200 MB of torch) pass
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# which installs torch 2.13.0 (+cpu) from that index first; the lock's torch==2.13.0 accepts it.
FROM python:3.11-slim AS build

ARG TORCH_INDEX_URL=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies in their own layer, from the same lock scripts/setup installs: this layer is
# rebuilt only when requirements.lock changes, not on every source edit.
COPY requirements.lock ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi \
    && pip install -r requirements.lock

# The package itself, with nothing resolved again (--no-deps). README.m[d] matches README.md
# when it exists (pyproject.toml names it) without failing the build when it does not.
COPY pyproject.toml README.m[d] ./
COPY gateway ./gateway
RUN pip install --no-deps . \
    && rm -rf build *.egg-info


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY policies ./policies
COPY examples ./examples

# An unprivileged user; the Hugging Face cache (models and adapters) lives on a volume.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gateway \
    && mkdir -p /models /etc/certainty-gateway \
    && chown gateway:gateway /models
USER gateway
VOLUME ["/models"]

EXPOSE 8000

# slim images have no curl: ask /health/live with the standard library. The first start
# downloads and loads the model, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

CMD ["certainty-gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/etc/certainty-gateway/config.yaml"]
