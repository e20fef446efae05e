"""The current OpenTelemetry context and span, read and set through the API's own ContextVar.

The API's ``get_current``, ``attach``, ``detach`` and ``get_current_span`` are each two to four
calls deep (the runtime-context object, ``get_value``, an ABC ``isinstance``), and a delivery
makes several of them. With the API's stock runtime context (``ContextVarsRuntimeContext``,
``OTEL_PYTHON_CONTEXT`` unset) and ``fast_paths()`` on, ``CURRENT`` reads and sets that
runtime's ``ContextVar`` directly: the same Context objects, one built-in call each. Otherwise
its methods are the API's own functions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

__all__ = ["CURRENT", "SPAN_KEY", "span_in", "with_span"]

# The context key of the current span, found through the public API.
SPAN_KEY: Final = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))
# Span types already seen to be API Spans (get_current_span's ABC isinstance is the slow part).
_SPAN_TYPES: Final[set[type]] = {trace.NonRecordingSpan}


def _runtime_var() -> ContextVar[otel_context.Context] | None:
    """Return the stock runtime context's ContextVar while the fast paths are on, else None."""
    from bridge.telemetry.fastpath.gate import fast_paths  # noqa: PLC0415 - the gate logs

    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is not ContextVarsRuntimeContext or type(var) is not ContextVar:
        return None
    return var if fast_paths().enabled else None


class _Current:
    """The current context's get / set / reset, bound on first use to the fastest equal form.

    ``get()`` is ``otel_context.get_current()``; ``set(context)`` is ``otel_context.attach``;
    ``reset(token)`` is ``otel_context.detach`` except that on the fast form it raises where the
    API logs (callers then hand the token to ``otel_context.detach``, which logs as ever).
    """

    __slots__ = ("get", "reset", "set")

    def __init__(self) -> None:
        """Bind every method to the resolver: the gate is asked at first use, not at import."""
        self.get: Callable[[], otel_context.Context] = self._resolve_get
        self.set: Callable[[otel_context.Context], Token[otel_context.Context]] = self._resolve_set
        self.reset: Callable[[Token[otel_context.Context]], Any] = self._resolve_reset

    def _resolve(self) -> None:
        """Bind get/set/reset: the API's first (the gate may log, and a log line reads these)."""
        self.get, self.set, self.reset = (
            otel_context.get_current,
            otel_context.attach,
            otel_context.detach,
        )
        var = _runtime_var()
        if var is not None:
            self.get, self.set, self.reset = var.get, var.set, var.reset

    def _resolve_get(self) -> otel_context.Context:
        self._resolve()
        return self.get()

    def _resolve_set(self, context: otel_context.Context) -> Token[otel_context.Context]:
        self._resolve()
        return self.set(context)

    def _resolve_reset(self, token: Token[otel_context.Context]) -> None:
        self._resolve()
        self.reset(token)


CURRENT: Final = _Current()


def span_in(context: otel_context.Context | None = None) -> trace.Span:
    """Return ``trace.get_current_span(context)``: the span of ``context`` (default: current)."""
    span: Any = (CURRENT.get() if context is None else context).get(SPAN_KEY)
    if span is None or (type(span) not in _SPAN_TYPES and not _is_span(span)):
        return trace.INVALID_SPAN
    return span  # type: ignore[no-any-return] # checked to be a Span just above


def with_span(span: trace.Span) -> otel_context.Context:
    """Return ``trace.set_span_in_context(span)``: the current context with ``span`` in it."""
    return otel_context.Context({**CURRENT.get(), SPAN_KEY: span})


def _is_span(value: object) -> bool:
    """Whether ``value`` is an API Span (as get_current_span checks); remembers its type."""
    if isinstance(value, trace.Span):
        _SPAN_TYPES.add(type(value))
        return True
    return False
