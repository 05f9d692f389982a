# iot_server API image. The same image runs the MQTT pinger:
#   web:    gunicorn -c gunicorn.conf.py wsgi:app   (the CMD below)
#   boot:   bin/boot                                (migrate with retries, then gunicorn)
#   worker: flask --app wsgi pinger
#   release/migrations: flask --app wsgi db upgrade
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    PINGER_HEALTH_FILE=/tmp/iot_server-pinger.heartbeat

WORKDIR /app

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependencies in their own layer: rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# The code stays root-owned and read-only to the app user; only the Flask
# instance folder (the default SQLite file) is writable.
RUN mkdir -p /app/instance && chown app:app /app/instance

USER app

EXPOSE 8000

# One probe for both roles of the image: /healthz on $PORT for the api (python:3.11-slim
# has no curl), the heartbeat for the pinger, which serves no HTTP. The interval matches
# PINGER_HEALTH_MAX_AGE (10 s): a stuck pinger fails a probe within two intervals.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/app/bin/healthcheck"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
