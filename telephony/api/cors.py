"""CORS for the dashboard's API (`/api/v1/*`), from an allow-list of origins.

A dashboard in a browser on one of CORS_ORIGINS may call the API with its bearer token
(or a session cookie, if one is ever used: credentials are allowed for these origins
only); a page on any other origin gets no CORS headers, so the browser refuses to let it
read any answer. An empty list (the default) allows no browser origin at all.

The web-call routes (public web calls, dashboard test calls, recordings) answer CORS
themselves (web_calls.py: `CORS_POLICIES`); flask-cors leaves a response alone once it
carries CORS headers.
"""
from __future__ import annotations

from flask import Flask
from flask_cors import CORS

# What the API reads from a browser request, and what a page may read from the answer.
ALLOWED_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"]
EXPOSED_HEADERS = ["Retry-After", "X-Request-ID", "Idempotent-Replayed", "Location"]
PREFLIGHT_MAX_AGE = 600  # seconds a browser may cache a preflight answer


def register(app: Flask, origins: tuple[str, ...]) -> None:
    if not origins:
        return
    CORS(app, resources={r"/api/v1/*": {"origins": list(origins)}}, supports_credentials=True,
         allow_headers=ALLOWED_HEADERS, expose_headers=EXPOSED_HEADERS, max_age=PREFLIGHT_MAX_AGE,
         methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], vary_header=True)
