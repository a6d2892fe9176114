"""Doors for people: the owner/staff web UI and the JSON API."""
