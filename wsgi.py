"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""
from telephony import create_app

app = create_app()
