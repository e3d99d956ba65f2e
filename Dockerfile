# The llamatelemetry sidecar exporter: llama-server (+ NVIDIA GPU) metrics for Prometheus on :9183.
#   docker build -t llamatelemetry-exporter .
#   docker run --rm -p 127.0.0.1:9183:9183 --add-host=host.docker.internal:host-gateway \
#     llamatelemetry-exporter --target http://host.docker.internal:8080
# GPU metrics need the NVIDIA Container Toolkit (`--gpus all`, or docker-compose.gpu.yml); without a GPU
# the exporter reports llamatelemetry_collector_up{collector="gpu"} 0 and serves everything else.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The NVIDIA runtime mounts libnvidia-ml.so only for the `utility` capability.
    NVIDIA_DRIVER_CAPABILITIES=utility \
    # Listen on all interfaces *inside* the container even when the user's arguments replace CMD and
    # pass only --target: a 127.0.0.1 listener in a container is unreachable through -p.
    LLAMATELEMETRY_EXPORTER_LISTEN=0.0.0.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY llamatelemetry ./llamatelemetry
# One image, two commands: the exporter (ENTRYPOINT) and `llamatelemetry proxy` (deploy/kubernetes runs it as a sidecar).
RUN pip install ".[exporter,proxy]" && cd / && rm -rf /src

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin llamatelemetry
USER 10001:10001
WORKDIR /

EXPOSE 9183
# Listen on all interfaces *inside* the container so Prometheus (another container) can scrape it.
ENTRYPOINT ["llamatelemetry-exporter"]
CMD ["--listen", "0.0.0.0", "--port", "9183", "--target", "llama-server=http://llama-server:8080"]
