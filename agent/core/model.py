"""The base of every settings model (agent config, web config, remediation policy), the field types they
share (:data:`Duration`, a Prometheus duration string in seconds; :data:`Regex`, a valid regex string), and the
:class:`Configurable` hook of collectors and plugins that declare their own settings model."""

from __future__ import annotations

from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict

from agent.core.durations import parse_duration
from agent.core.regex import RegexError, compile_anchored


class Model(BaseModel):
    """Frozen, strict types, unknown keys rejected; a field with an alias (``continue_``/``continue``) accepts
    either spelling."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


def _duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"duration must be a string like 30s or 5m, got {value!r}")
    return parse_duration(value)


def _regex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a regular expression string")
    try:
        compile_anchored(value)   # RE2 (Go regexp) syntax and linear-time matching, as node_exporter
    except RegexError as err:
        raise ValueError(f"invalid regular expression {value!r}: {err}") from err
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
Regex = Annotated[str, BeforeValidator(_regex)]


@runtime_checkable
class Configurable(Protocol):
    """Optional, on a collector or remediation plugin class: ``Config``, the pydantic model of its settings
    section (``collectors.NAME`` in the config, a ``CollectorConfig`` subclass; ``plugins.NAME`` in the policy).
    Without it a collector gets ``CollectorConfig`` and a plugin a plain dict."""

    Config: type[BaseModel]
