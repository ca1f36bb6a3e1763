# The pg-health-exporter image: docker build -t pg-health-exporter .
#   docker run -v $PWD/config.yaml:/etc/pg-health-exporter/config.yaml -p 9188:9188 pg-health-exporter
# psycopg[binary] ships its own libpq, so the slim image needs no system packages.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build reads: a change to the tests or docs does not rebuild it.
COPY pyproject.toml README.md /src/
COPY exporter /src/exporter
RUN pip install /src && rm -rf /src

# The exporter never needs root: it only reads its config and listens on an unprivileged port.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pg-health-exporter
USER 10001

EXPOSE 9188
CMD ["pg-health-exporter", "--config", "/etc/pg-health-exporter/config.yaml"]
