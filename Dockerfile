# sqlfleet server image: `docker build -t sqlfleet .`, then `docker run -p 8080:8080 -v data:/data sqlfleet`.
# Runs as a non-root user with a read-only root filesystem in mind: everything it writes goes to
# /data (the data dir, a volume) and /tmp.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tenants tenants
COPY router router
COPY schema_sync schema_sync
COPY backups backups
COPY metrics metrics
COPY ops ops
RUN python -m venv /opt/sqlfleet \
 && /opt/sqlfleet/bin/pip install --no-cache-dir . \
 && /opt/sqlfleet/bin/python -m compileall -q /opt/sqlfleet

FROM python:3.11-slim
COPY --from=build /opt/sqlfleet /opt/sqlfleet
RUN groupadd --gid 10001 sqlfleet \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sqlfleet \
 && mkdir /data && chown 10001:10001 /data
ENV PATH=/opt/sqlfleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SQLFLEET_DATA_DIR=/data \
    SQLFLEET_HOST=0.0.0.0 \
    SQLFLEET_PORT=8080
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# exec form: sqlfleet is PID 1 and gets SIGTERM directly (graceful shutdown)
ENTRYPOINT ["sqlfleet"]
CMD ["serve"]
