"""The floor of bench/hooks.py: a bare Flask app with one route and no extensions, served
by the same `gunicorn.conf.py` (workers, threads, logging, access log) as the real app.
`/healthz` of the real app is measured against this one's."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/healthz")
def healthz():
    """What the real /healthz answers, with nothing around it."""
    return jsonify(c="OK")
