# syntax=docker/dockerfile:1
# Aforo for production: the engine and its doors, pointed at real Kafka, Postgres and Redis.
# No embedded stack (the [embedded] extra): `aforo up` is for laptops, not images.
#   docker build -t aforo .
#   docker run --env-file aforo.env aforo serve --host 0.0.0.0 --port 8080
# Every process of a deployment runs this image with another command: see deploy/.

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/aforo
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY api ./api
COPY cli ./cli
COPY config ./config
COPY flows ./flows
COPY mcp_proxy ./mcp_proxy
COPY observe ./observe
COPY operators ./operators
COPY schemas ./schemas
COPY sinks ./sinks
COPY stack ./stack
# Wheels only: every dependency (Bytewax, confluent-kafka with librdkafka, psycopg with libpq)
# ships manylinux wheels for CPython 3.12, so the image needs no compiler.
RUN /opt/aforo/bin/pip install --no-cache-dir --only-binary=:all: --no-binary=aforo .

FROM python:3.12-slim
RUN groupadd --system --gid 10001 aforo \
 && useradd --system --uid 10001 --gid aforo --home-dir /var/lib/aforo --create-home --shell /usr/sbin/nologin aforo
COPY --from=build /opt/aforo /opt/aforo
# AFORO_HOME holds the monitoring flow's recovery snapshots (mount a volume at AFORO_RECOVERY_DIR)
# and, only when AFORO_SECRET is unset, a generated secret: set AFORO_SECRET in every deployment.
ENV PATH=/opt/aforo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AFORO_HOME=/var/lib/aforo \
    AFORO_RECOVERY_DIR=/var/lib/aforo/recovery \
    AFORO_METRICS_HOST=0.0.0.0 \
    AFORO_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/aforo
# 8080: the API (aforo serve); 9100: /metrics, /healthz, /readyz of flow processes (--metrics-port);
# 2101: Bytewax cluster traffic between metering processes
EXPOSE 8080 9100 2101
ENTRYPOINT ["aforo"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
