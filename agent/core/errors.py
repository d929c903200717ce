"""The exception tree. Translate OSError / NVMLError at the boundary with ``raise ... from err``."""


class NodewardenError(Exception):
    """Base of every error nodewarden raises on purpose."""


class ConfigError(NodewardenError):
    """A configuration file is invalid. ``str()`` is ``file:line:column: message`` lines."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class RuleError(NodewardenError):
    """A rule file or expression is invalid. ``problems`` lists ``file:line:column: message`` strings."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class CollectorError(NodewardenError):
    """A collector failed this round; the loop reports it and goes on."""


class NoData(NodewardenError):
    """There is nothing to report (e.g. no InfiniBand devices); not a failure."""


class PluginLoadError(NodewardenError):
    """A plugin could not be discovered or loaded; only that plugin is disabled."""


class RemediationError(NodewardenError):
    """A remediation failed to plan, apply, verify or revert."""
