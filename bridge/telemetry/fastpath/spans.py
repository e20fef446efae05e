"""A recording span that costs little: plain slots until ``end()``, then the SDK's ReadableSpan.

``LeanSpan`` implements the ``opentelemetry.trace.Span`` API the way the SDK's span does (same
cleaning of attributes, same status rules, same events and warnings) but keeps its state in
slots and a plain dict, without a lock, a ``BoundedAttributes`` or a ``BoundedList`` on the
common path. ``end()`` builds the SDK's public ``ReadableSpan`` with everything the SDK's span
would have handed over and gives it to each span processor's ``on_end``.
``bridge.telemetry.tracing``
decides when a span may be a ``LeanSpan`` (``SpanRecorder.applies``); otherwise the SDK makes it.

A span is ended and changed from one thread at a time (the bridge's event loop); the SDK's span
takes a lock for each call instead.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from time import time_ns
from types import TracebackType
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationInfo, InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.util import types

__all__ = ["LeanSpan", "SpanRecorder", "plain_attributes"]

# The SDK's warnings, from the SDK's logger, so a user's logging set-up treats them alike.
_sdk_log: Final = logging.getLogger("opentelemetry.sdk.trace")

# Values the SDK's attribute cleaning keeps as they are (exact types: a subclass such as an
# IntEnum goes through BoundedAttributes, which converts it as the SDK would).
_PLAIN: Final = frozenset({str, bool, int, float})

# Processors whose on_start and _on_ending do nothing: a span they see only at on_end.
_END_ONLY: Final = (SimpleSpanProcessor, BatchSpanProcessor)

_UNSET: Final = trace.Status(trace.StatusCode.UNSET)


def plain_attributes(attributes: Mapping[str, Any]) -> bool:
    """Say whether the SDK would keep ``attributes`` as given (non-empty str keys, plain values)."""
    for key, value in attributes.items():
        if type(value) not in _PLAIN or type(key) is not str or not key:
            return False
    return True


class SpanRecorder:
    """What every LeanSpan of one tracer shares: resource, scope, limits, the processors.

    ``applies()`` is the rule for when spans may be lean: the SDK tracer is enabled, its
    internal span metrics are off, no attribute value is truncated (no length limit) and a
    span may hold at least one attribute, and the provider's processor is the SDK's
    synchronous one holding only SimpleSpanProcessor / BatchSpanProcessor (exactly those
    classes, whose ``on_start`` and ``_on_ending`` do nothing, so only ``on_end`` must be
    called). Anything else (another processor, a subclass, a ConcurrentMultiSpanProcessor)
    and the SDK makes the span.
    """

    __slots__ = (
        "_checked",
        "_checked_ok",
        "_static_ok",
        "_tracer",
        "finished",
        "info",
        "limits",
        "max_attributes",
        "scope",
        "span_attributes_limit",
    )

    def __init__(self, tracer: Any, multi: Any, limits: Any) -> None:  # noqa: ANN401 - SDK objects
        """Read what spans of the SDK ``tracer`` (over processor ``multi``, ``limits``) share."""
        from opentelemetry.sdk.trace._tracer_metrics import (  # noqa: PLC0415 - private: the gate checked it
            NoOpTracerMetrics,
        )

        self._tracer = tracer
        # Hands an ended span to the processors, as the SDK's span does: the processor's own
        # bound method, so ending a span costs no extra call.
        self.finished: Callable[[ReadableSpan], None] = multi.on_end
        self.limits: SpanLimits = limits
        self.info: InstrumentationInfo | None = getattr(tracer, "instrumentation_info", None)
        self.scope: InstrumentationScope | None = getattr(tracer, "_instrumentation_scope", None)
        limit = getattr(limits, "max_span_attributes", 0)
        self.span_attributes_limit: int | None = limit  # for BoundedAttributes, as the SDK's
        self.max_attributes: int = sys.maxsize if limit is None else limit  # for len() checks
        self._static_ok = (
            type(multi) is SynchronousMultiSpanProcessor
            and isinstance(limits, SpanLimits)
            and isinstance(self.scope, InstrumentationScope)
            and isinstance(getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics)
            and callable(getattr(tracer, "_is_enabled", None))
            and isinstance(getattr(tracer, "resource", None), Resource)
            and limits.max_span_attribute_length is None
            and limits.max_attribute_length is None
            and self.max_attributes > 0
        )
        self._checked: tuple[SpanProcessor, ...] | None = None
        self._checked_ok = False

    def applies(self, processors: tuple[SpanProcessor, ...]) -> bool:
        """Say whether a span for ``processors`` (the provider's current tuple) may be lean."""
        if not self._static_ok or not self._tracer._is_enabled():
            return False
        if processors is not self._checked:  # the SDK replaces the tuple when one is added
            self._checked_ok = all(type(p) in _END_ONLY for p in processors)
            self._checked = processors
        return self._checked_ok

    @property
    def resource(self) -> Resource:
        """The tracer's resource now (the SDK updates it after a fork)."""
        resource: Resource = self._tracer.resource
        return resource


def _ended_warning(method: str) -> None:
    """Log the SDK's warning for a change to an ended span."""
    _sdk_log.warning("Tried calling %s on an ended span.", method)


class LeanSpan(trace.Span):
    """A sampled, recording span with the SDK's semantics and a fraction of its cost.

    Attributes stay a plain dict while every key is a non-empty str, every value a plain
    str/bool/int/float and the count within the limit; the first other call turns them into
    the SDK's ``BoundedAttributes`` (which cleans, converts, drops and counts exactly as the
    SDK's span does). Events and links use the SDK's own ``Event``/``Link`` with
    ``BoundedAttributes`` and a ``BoundedList``, made on the first one.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_record_exception",
        "_recorder",
        "_resource",
        "_set_status_on_exception",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        recorder: SpanRecorder,
        name: str,
        context: trace.SpanContext,
        *,
        parent: trace.SpanContext | None,
        kind: trace.SpanKind,
        attributes: Mapping[str, types.AnyValue],
        start_time: int | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        """Start the span now (or at ``start_time``) with the sampler's ``attributes``."""
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._resource = recorder.resource
        self._attributes: dict[str, types.AnyValue] | BoundedAttributes
        if len(attributes) <= recorder.max_attributes and plain_attributes(attributes):
            self._attributes = dict(attributes)
        else:
            self._attributes = BoundedAttributes(
                recorder.span_attributes_limit, attributes, immutable=False, max_value_len=None
            )
        self._events: BoundedList[Event] | None = None
        self._links: BoundedList[trace.Link] | None = None
        self._status = _UNSET
        self._start_time = start_time if start_time is not None else time_ns()
        self._end_time: int | None = None
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception

    def __repr__(self) -> str:
        """Name and context, like the SDK's span."""
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    def _bounded(self) -> BoundedAttributes:
        """Turn the attributes into the SDK's ``BoundedAttributes`` (once, when first needed)."""
        attributes = self._attributes
        if isinstance(attributes, BoundedAttributes):
            return attributes
        bounded = BoundedAttributes(
            self._recorder.span_attributes_limit, attributes, immutable=False, max_value_len=None
        )
        self._attributes = bounded
        return bounded

    def get_span_context(self) -> trace.SpanContext:
        """Return the span's ids, flags and trace state."""
        return self._context

    def is_recording(self) -> bool:
        """Say whether the span still records (until it ends)."""
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """Set one attribute (a key set again moves to the end, as in the SDK)."""
        if self._end_time is not None:
            _sdk_log.warning("Setting attribute on ended span.")
            return
        attributes = self._attributes
        if type(attributes) is dict and type(value) in _PLAIN and type(key) is str and key:
            if key in attributes:
                del attributes[key]
            elif len(attributes) >= self._recorder.max_attributes:
                self._bounded()[key] = value  # drops the oldest and counts it
                return
            attributes[key] = value
        else:
            self._bounded()[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set several attributes, cleaned as the SDK cleans them."""
        if self._end_time is not None:
            _sdk_log.warning("Setting attribute on ended span.")
            return
        if type(self._attributes) is dict and plain_attributes(attributes):
            for key, value in attributes.items():
                self.set_attribute(key, value)
            return
        # The SDK cleans the whole mapping first (converting or dropping bad keys, counting
        # them as dropped), then sets each: a BoundedAttributes built from it does the same.
        cleaned = BoundedAttributes(None, attributes, immutable=True, max_value_len=None)
        bounded = self._bounded()
        bounded.dropped += cleaned.dropped
        for key, value in cleaned.items():
            bounded[key] = value

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        """Add an event (timestamped now unless given), attributes cleaned as the SDK does."""
        limits = self._recorder.limits
        event = Event(
            name=name,
            attributes=BoundedAttributes(
                limits.max_event_attributes,
                attributes,
                max_value_len=limits.max_attribute_length,
                immutable=True,
            ),
            timestamp=timestamp,
        )
        if self._end_time is not None:
            _ended_warning("_add_event")
            return
        if self._events is None:
            self._events = BoundedList(limits.max_events)
        self._events.append(event)

    def add_link(self, context: trace.SpanContext, attributes: types.Attributes = None) -> None:
        """Add a link to ``context`` unless the SDK would ignore it (invalid and bare)."""
        if not (context and (context.is_valid or (attributes or context.trace_state))):
            return
        limits = self._recorder.limits
        link = trace.Link(
            context=context,
            attributes=BoundedAttributes(
                limits.max_link_attributes,
                attributes,
                max_value_len=limits.max_attribute_length,
                immutable=True,
            ),
        )
        if self._end_time is not None:
            _ended_warning("_add_link")
            return
        if self._links is None:
            self._links = BoundedList(limits.max_links)
        self._links.append(link)

    def update_name(self, name: str) -> None:
        """Rename the span."""
        if self._end_time is not None:
            _ended_warning("update_name")
            return
        self._name = name

    def set_status(
        self, status: trace.Status | trace.StatusCode, description: str | None = None
    ) -> None:
        """Set the status as the SDK does: UNSET is ignored, OK is final."""
        if self._end_time is not None:
            _ended_warning("set_status")
            return
        if isinstance(status, trace.Status):
            if self._status.status_code is trace.StatusCode.OK or (
                status.status_code is trace.StatusCode.UNSET
            ):
                return
            if description is not None:
                _sdk_log.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif isinstance(status, trace.StatusCode):
            if self._status.status_code is trace.StatusCode.OK or (
                status is trace.StatusCode.UNSET
            ):
                return
            self._status = trace.Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Record ``exception`` as the SDK's "exception" event (type, message, stack, escaped)."""
        stacktrace = "".join(traceback.format_exception(exception))
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        exception_type = f"{module}.{qualname}" if module and module != "builtins" else qualname
        event_attributes: MutableMapping[str, types.AnyValue] = {
            EXCEPTION_TYPE: exception_type,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: stacktrace,
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            event_attributes.update(attributes)
        self.add_event(name="exception", attributes=event_attributes, timestamp=timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span and hand the SDK's ReadableSpan of it to the processors (once)."""
        if self._end_time is not None:
            _sdk_log.warning("Calling end() on an ended span.")
            return
        self._end_time = end = end_time if end_time is not None else time_ns()
        recorder = self._recorder
        recorder.finished(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=self._resource,
                attributes=self._attributes,  # no setter changes it after end
                events=() if self._events is None else self._events,
                links=() if self._links is None else self._links,
                kind=self._kind,
                status=self._status,
                start_time=self._start_time,
                end_time=end,
                instrumentation_info=recorder.info,
                instrumentation_scope=recorder.scope,
            )
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """``with span:`` records an escaping exception (escaped) and sets ERROR, then ends."""
        if exc_val is not None and self._end_time is None:
            if self._record_exception:
                self.record_exception(exception=exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(
                    trace.Status(trace.StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}")
                )
        self.end()
