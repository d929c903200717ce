"""Serving: HTTP endpoint, exposition, systemd notification."""
