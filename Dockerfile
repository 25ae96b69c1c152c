# syntax=docker/dockerfile:1
# memstore server image: builds wheels from the committed stubs (no code generation
# at build time), runs as an unprivileged user, and checks health over gRPC.

FROM python:3.11-slim AS build
WORKDIR /src
COPY client/python/ client/python/
COPY pyproject.toml README.md ./
COPY server/ server/
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./client/python .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin memstore
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER memstore
ENV MEMSTORE_LISTEN=0.0.0.0:50051 \
    PYTHONUNBUFFERED=1
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["memstore-server", "healthcheck"]
# MEMSTORE_DATABASE_URL must be set: the image carries no embedded PostgreSQL.
ENTRYPOINT ["memstore-server"]
CMD ["serve"]
