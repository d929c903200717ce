"""nodewarden: per-node monitoring and auto-remediation daemon for GPU servers."""

__version__ = "0.1.0"
