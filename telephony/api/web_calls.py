"""(being written)"""
from flask import Blueprint

bp = Blueprint("web_calls", __name__)
