"""(being written)"""
from flask import Blueprint

bp = Blueprint("event_endpoints", __name__)
