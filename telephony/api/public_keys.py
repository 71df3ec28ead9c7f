"""(being written)"""
from flask import Blueprint

bp = Blueprint("public_keys", __name__)
