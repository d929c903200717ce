"""Core: errors, paths, durations, formatting (Go floats, RFC 3339), settings models, YAML positions, config,
alerts, logs, discovery, and the collector / plugin protocols (metrics.py, plugin.py)."""
