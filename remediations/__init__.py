"""Built-in remediation plugins (registered through the ``nodewarden.remediations`` entry-point group)."""
