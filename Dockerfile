# syntax=docker/dockerfile:1
# One image for both console scripts: `event-processor run` (the default) and `sensor-fleet`.
#   docker build -t event-processor .
#   docker run --rm -e AWS_ENDPOINT_URL=http://host.docker.internal:4566 event-processor
#   docker run --rm event-processor sensor-fleet simulate
# docker-compose.yaml builds it for the local world (see docs/local-world.md).

# --- builder: a virtualenv with the project and its dependencies, no compilers needed -----------
# (every dependency ships manylinux wheels for CPython 3.11).
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the tree out of the context).
# devworld/ (emulator, demo, bench) stays out: the image runs the daemon and the fleet, and
# packages.find simply finds no devworld here, so the wheel holds the two packages.
COPY pyproject.toml README.md ./
COPY event_processor ./event_processor
COPY sensor_fleet ./sensor_fleet
# The runtime dependencies and the fleet extra (localstack-client) only: no moto, flask or rich
# (the `demo` extra). pip byte-compiles what it installs: the runtime user cannot write
# __pycache__ under /opt/venv.
RUN /opt/venv/bin/pip install --no-cache-dir '.[fleet]'

# --- runtime: the slim base, the virtualenv, an unprivileged user -----------------------------
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="event-processor" \
      org.opencontainers.image.description="SQS sensor submissions -> validated, ordered Kinesis records, with a DLQ; plus the sensor-fleet generator"

# A fixed uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
       --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9100

USER 10001:10001
WORKDIR /home/app

# /metrics, /healthz, /readyz
EXPOSE 9100
# The daemon drains on SIGTERM within SHUTDOWN_GRACE_SECONDS (20): give the container more
# than that before SIGKILL (compose: stop_grace_period; ECS: stopTimeout; k8s: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# Liveness: /healthz answers while the event loop turns. No curl in slim: Python's urllib.
# METRICS_PORT=0 (no HTTP port) and containers running sensor-fleet have nothing to probe:
# compose disables the check for sensor-fleet.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('METRICS_PORT') or '9100'; port == '0' or urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3)"]

# No entrypoint wrapper: the command is the program, so compose and k8s can run either script
# (`sensor-fleet simulate`) and the program is PID 1 and receives SIGTERM itself.
ENTRYPOINT []
CMD ["event-processor", "run"]
