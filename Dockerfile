# The service's image: one image for every role, chosen by the command (docker-compose.yml):
#   web      gunicorn --config gunicorn.conf.py wsgi:app   (the default)
#   worker   telephony worker run
#   migrate  telephony db upgrade
# Slim Python base, dependencies installed from requirements.lock with their hashes
# checked, runs as an unprivileged user, /healthz as the health check.
ARG PYTHON_IMAGE=python:3.11-slim

# -- build: a virtualenv with the locked dependencies and the project ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# --require-hashes: every file must match the lock, or the build stops.
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /app
COPY pyproject.toml README.md ./
COPY telephony ./telephony
# Editable: the `telephony` command runs the code in /app, next to the migrations and
# alembic.ini it applies (telephony/migrate.py finds them beside the package).
RUN /opt/venv/bin/pip install --no-deps -e .

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 telephony \
 && useradd --uid 10001 --gid telephony --home-dir /app --no-create-home --shell /usr/sbin/nologin telephony
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /app /app
COPY wsgi.py gunicorn.conf.py alembic.ini Procfile ./
COPY migrations ./migrations
# The app's files belong to root and are read-only for the service; only the instance
# folder (SQLite development key and database) is its own.
RUN mkdir -p /app/instance && chown telephony:telephony /app/instance
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIND_HOST=0.0.0.0 \
    PORT=8000
USER telephony
EXPOSE 8000
# The process answers (no dependency checked: a database outage must not get healthy
# web containers restarted). Readiness, database included, is /readyz (docs/deploy.md).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
