"""Core: errors, paths, durations, YAML positions, config models, and the collector/plugin protocols."""
