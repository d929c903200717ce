"""Collectors: one subsystem each, registered through the ``nodewarden.collectors`` entry points."""
