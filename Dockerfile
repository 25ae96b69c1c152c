# syntax=docker/dockerfile:1
# memstore server image: builds wheels from the committed stubs (no code generation
# and no grpcio-tools at build time), runs as an unprivileged user, and checks
# health over the gRPC health service.
#
#   docker build -t memstore-server:0.1.0 .
#   docker run -e MEMSTORE_DATABASE_URL=postgresql://... -p 50051:50051 memstore-server:0.1.0
#
# The tag pins Python's minor version and the Debian release; patch releases of both
# come with a rebuild.

FROM python:3.11-slim-trixie AS build
WORKDIR /src
COPY client/python/ client/python/
COPY pyproject.toml README.md ./
COPY server/ server/
# `pip wheel` builds memstore-client and memstore-server and downloads a wheel for every
# dependency into /wheels: what the resolver picked here, once, is what the image runs.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./client/python .

FROM python:3.11-slim-trixie
# Numeric user and group, so Kubernetes' runAsNonRoot can verify them without a lookup.
RUN groupadd --system --gid 10001 memstore \
    && useradd --system --uid 10001 --gid memstore --no-create-home --shell /usr/sbin/nologin memstore
# Versions are pinned by the wheel set, not by `name==version` arguments: --no-index installs
# exactly the wheels resolved in the build stage and fails rather than fetch anything else.
# The wheels are bind-mounted from the build stage, so they add no layer to this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl
USER 10001:10001
# MEMSTORE_DATABASE_URL must be set at run time: the image carries no embedded PostgreSQL.
ENV MEMSTORE_LISTEN=0.0.0.0:50051 \
    MEMSTORE_METRICS_LISTEN=0.0.0.0:9464 \
    PYTHONUNBUFFERED=1
# gRPC, and Prometheus metrics.
EXPOSE 50051 9464
# `healthcheck` asks the gRPC health service at MEMSTORE_LISTEN (0.0.0.0 becomes 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["memstore-server", "healthcheck"]
# Exec form: memstore-server is PID 1 and receives SIGTERM itself (it drains in-flight RPCs
# for MEMSTORE_GRACE_PERIOD seconds, then exits 0).
ENTRYPOINT ["memstore-server"]
CMD ["serve"]
