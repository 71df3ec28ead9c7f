"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`.

Settings come from the environment, and from a `.env` file next to this one if there is
one (see `.env.example`; a variable already set in the environment wins). A bad setting
stops the process with one line naming the variable, not a traceback.
"""
import sys
from pathlib import Path

from telephony import create_app
from telephony.config import ConfigError, load_env_file

load_env_file(Path(__file__).resolve().parent / ".env")
try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    raise SystemExit(2) from None
