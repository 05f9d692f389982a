"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, `flask --app wsgi ...`.

gunicorn.conf.py refuses to start the server when a required secret is missing; management
commands (`flask db upgrade`, `flask users ...`) only need the database.
"""

from iot_server import create_app

app = create_app()
