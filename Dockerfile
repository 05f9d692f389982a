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
    PORT=8000

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

# python:3.11-slim has no curl; gunicorn listens on $PORT (gunicorn.conf.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
