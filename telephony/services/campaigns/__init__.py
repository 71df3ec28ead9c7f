"""Outbound campaigns: management (manage), contact import (contacts), calling windows (windows)."""
