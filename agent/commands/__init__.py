"""One module per CLI command; see agent/cli.py."""
