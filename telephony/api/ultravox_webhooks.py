"""(being written)"""
from flask import Blueprint

bp = Blueprint("ultravox_webhooks", __name__)
