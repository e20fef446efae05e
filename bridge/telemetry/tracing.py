"""Spans for the delivery path: the bridge's tracer, cheap whether spans are exported or not.

With no exporter configured, no span objects are made, only the ids a ``traceparent`` and a log
line need (``IdsTracer``, on the public API alone): tracing costs a span id and a context switch
per delivery. With the SDK's Simple/Batch span processors a recorded span is a
``bridge.telemetry.fastpath.spans.LeanSpan`` (``LeanTracer``, behind the fast-path gate): slots
and a dict until it ends, then the SDK's ``ReadableSpan`` handed to the processors, as the SDK's
own span would hand it.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import MappingProxyType, TracebackType
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util.types import Attributes

from bridge.telemetry.bounds import bounded
from bridge.telemetry.fastpath.current import CURRENT, SPAN_KEY, span_in
from bridge.telemetry.fastpath.gate import fast_paths
from bridge.telemetry.fastpath.spans import LeanSpan, SpanRecorder

__all__ = ["INSTRUMENTATION_NAME", "IdsTracer", "LeanTracer", "get_tracer"]

INSTRUMENTATION_NAME: Final = "signal-bridge"


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Return the bridge's tracer from ``provider`` or the global one."""
    from bridge import __version__  # noqa: PLC0415 - the package imports this module

    return trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=provider)


def _recorder(delegate: trace.Tracer, provider: Any) -> SpanRecorder | None:  # noqa: ANN401 - SDK
    """Make the SpanRecorder for ``delegate`` if it is the SDK's tracer (else: always the SDK)."""
    from opentelemetry.sdk.trace import Tracer as SdkTracer  # noqa: PLC0415 - SDK only here

    # The same processors, sampler and ids the LeanTracer reads from the provider.
    if type(delegate) is not SdkTracer or (
        delegate.span_processor is not getattr(provider, "_active_span_processor", None)
        or delegate.sampler is not getattr(provider, "sampler", None)
        or delegate.id_generator is not getattr(provider, "id_generator", None)
    ):
        return None
    return SpanRecorder(delegate, delegate.span_processor, getattr(delegate, "_span_limits", None))


def _follows_parent(sampler: Any) -> bool:  # noqa: ANN401 - any sampler
    """Say whether ``sampler`` is a ParentBased whose answer under a valid parent is its flag.

    That is the SDK's ParentBased (or a subclass that changes only the root, such as
    ParentBasedTraceIdRatio) with the stock delegates: ALWAYS_ON for a sampled parent,
    ALWAYS_OFF for an unsampled one, remote or local. Those return the parent's trace state and,
    when sampled, the caller's attributes; asking them changes nothing else.
    """
    from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415 - SDK only here
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
    )

    return (
        isinstance(sampler, ParentBased)
        and type(sampler).should_sample is ParentBased.should_sample
        and getattr(sampler, "_remote_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
        and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF
        and getattr(sampler, "_local_parent_not_sampled", None) is ALWAYS_OFF
    )


_NO_ATTRIBUTES: Final[Mapping[str, Any]] = MappingProxyType({})
_FLAGS: Final = tuple(trace.TraceFlags(bits) for bits in range(4))  # sampled | random-id bits
_SAMPLED_BITS: Final = 0x03
# TraceFlags' bits, tested without its properties (a call each) on the hot path.
_SAMPLED: Final = trace.TraceFlags.SAMPLED
_RANDOM_ID: Final = trace.TraceFlags.RANDOM_TRACE_ID
_LOW_BITS: Final = (1 << 64) - 1  # the part of a trace id TraceIdRatioBased compares
_ALL_IDS: Final = 1 << 64  # a bound every root is below


def _bounded_exception(exc: BaseException) -> dict[str, str] | None:
    """Cut a long exception message (and its copy in the stack) to 2 KiB for the span event."""
    message = str(exc)
    cut = bounded(message)
    if cut is message:
        return None
    stack = "".join(traceback.format_exception(exc)).replace(message, cut)
    return {"exception.message": cut, "exception.stacktrace": stack}


class _CurrentSpan:
    """``start_as_current_span``'s context manager as a plain object (no generator frames).

    Same behaviour as the API's ``use_span(..., end_on_exit=True)``: the span is current inside
    the block; an ``Exception`` leaving it is recorded and sets an ERROR status on a recording
    span; the span ends on exit.
    """

    __slots__ = ("_end", "_record", "_set_status", "_span", "_token")

    def __init__(
        self, span: trace.Span, *, end: bool, record_exception: bool, set_status: bool
    ) -> None:
        """Hold ``span`` until the block is entered."""
        self._span = span
        self._end = end
        self._record = record_exception
        self._set_status = set_status
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> trace.Span:
        """Make the span current and return it."""
        # otel_context.attach(trace.set_span_in_context(span)), without its four calls deep.
        span = self._span
        self._token = CURRENT.set(otel_context.Context({**CURRENT.get(), SPAN_KEY: span}))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Restore the previous context, record an escaping exception, end the span."""
        token = self._token
        if token is not None:
            try:
                CURRENT.reset(token)
            except Exception:  # the API's detach below logs what went wrong
                otel_context.detach(token)  # tries again and logs "Failed to detach context"
        span = self._span
        if exc is not None and isinstance(exc, Exception) and span.is_recording():
            if self._record:
                span.record_exception(exc, attributes=_bounded_exception(exc))
            if self._set_status:
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, bounded(f"{type(exc).__name__}: {exc}"))
                )
        if self._end:
            span.end()


class _PlainTracer(trace.Tracer):
    """A tracer whose ``start_as_current_span`` is a plain context manager over ``start_span``."""

    # The API types this as its generator-based context manager; ours is a plain one, used alike.
    def start_as_current_span(  # type: ignore[override] # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _CurrentSpan:
        """Start a span and make it current for a ``with`` block."""
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        return _CurrentSpan(
            span,
            end=end_on_exit,
            record_exception=record_exception,
            set_status=set_status_on_exception,
        )


def _static_bound(sampler: Any) -> int | None:  # noqa: ANN401 - any sampler
    """Return the bound below which ``sampler`` samples a trace id, if it reads nothing else.

    The SDK's ALWAYS_ON (every id), ALWAYS_OFF (none) and a plain TraceIdRatioBased (its
    ``bound``, against the 64 low bits of the id, as its docstring says) answer any span with
    RECORD_AND_SAMPLE and the caller's attributes below it, else DROP, and the trace state of a
    valid parent (none for a root); asking them changes nothing else. None: ask the sampler.
    """
    from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415 - SDK only here
        ALWAYS_OFF,
        ALWAYS_ON,
        TraceIdRatioBased,
    )

    if sampler is ALWAYS_ON:
        return _ALL_IDS
    if sampler is ALWAYS_OFF:
        return 0
    if type(sampler) is TraceIdRatioBased and sampler.TRACE_ID_LIMIT == _LOW_BITS:
        return sampler.bound
    return None


def _bounds(sampler: Any) -> tuple[int | None, int | None]:  # noqa: ANN401 - any sampler
    """Return ``_static_bound`` of what ``sampler`` asks for a root, and under a valid parent.

    A stock ParentBased (see ``_follows_parent``) asks its root sampler for a root and follows a
    valid parent's flag (no bound: the tracers answer that case themselves).
    """
    static = _static_bound(sampler)
    if static is not None:
        return static, static
    if _follows_parent(sampler):
        return _static_bound(getattr(sampler, "_root", None)), None
    return None, None


_SpanContext: Final = trace.SpanContext
_new_tuple: Final = tuple.__new__


def _lean_ids(ids: Any) -> bool:  # noqa: ANN401 - any IdGenerator
    """Say whether span ids and contexts may be made without the SDK's calls (see IdsTracer).

    Only for the SDK's own RandomIdGenerator (ids from ``random.getrandbits``, never 0) and a
    verified API, whose ``SpanContext`` is the tuple its ``__new__`` builds.
    """
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: PLC0415 - SDK only here

    return type(ids) is RandomIdGenerator and fast_paths().enabled


class IdsTracer(_PlainTracer):
    """The tracer of a provider that exports nothing: spans are only their ids, never recorded.

    Built on the public API (``IdGenerator``, ``Sampler``, ``NonRecordingSpan``), so it works
    whatever the gate says; only with it on and the SDK's ``RandomIdGenerator`` does it draw span
    ids and build span contexts itself (``_lean_ids``: two calls fewer a span, the same values).
    ``setup_telemetry`` uses it when no span exporter is configured, with the
    ``ParentBased(ALWAYS_OFF)`` sampler it gave the provider: a span follows its parent's sampled
    flag and trace state, and a root is unsampled, exactly the ids and flags the SDK would give.
    """

    def __init__(self, ids: Any, sampler: Any, *, follows_parent: bool) -> None:  # noqa: ANN401 - SDK
        """Use ``ids`` (an IdGenerator) and ``sampler``.

        ``follows_parent``: ``sampler`` is known to answer a valid parent with the parent's
        sampled flag and trace state (a ParentBased with the stock delegates), so it is not
        asked then; nor when ``_bounds`` knows its answer.
        """
        self._ids = ids
        self._sampler = sampler
        self._follows_parent = follows_parent
        self._random_root = bool(ids.is_trace_id_random())
        self._root_bound, self._parent_bound = _bounds(sampler)
        self._lean_ids = _lean_ids(ids)

    def start_span(  # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        """Make the span the SDK would, reduced to its context: ids, flags and trace state."""
        del start_time, record_exception, set_status_on_exception
        ids = self._ids
        lean = self._lean_ids
        # A SpanContext is typed as its tuple: unpacked here instead of five property calls.
        trace_id, _, _, flags, trace_state, valid = span_in(context).get_span_context()
        # The SDK's RandomIdGenerator draws exactly this (and again for a zero).
        span_id = (lean and random.getrandbits(64)) or ids.generate_span_id()
        if valid:
            if self._follows_parent:
                flags = _FLAGS[flags & _SAMPLED_BITS]
                if lean:  # SpanContext.__new__'s tuple for a valid trace id and span id
                    return trace.NonRecordingSpan(
                        _new_tuple(
                            _SpanContext, (trace_id, span_id, False, flags, trace_state, True)
                        )
                    )
                return trace.NonRecordingSpan(
                    trace.SpanContext(trace_id, span_id, False, flags, trace_state)
                )
            random_id, bound = flags & _RANDOM_ID != 0, self._parent_bound
        else:
            trace_id, random_id = ids.generate_trace_id(), self._random_root
            bound, trace_state = self._root_bound, trace.DEFAULT_TRACE_STATE
        if bound is not None:  # what the sampler would answer (see _bounds)
            sampled = (trace_id & _LOW_BITS) < bound
            flags = _FLAGS[(1 if sampled else 0) | (2 if random_id else 0)]
            if lean:  # as above: the trace id is a valid parent's or a new random one
                return trace.NonRecordingSpan(
                    _new_tuple(_SpanContext, (trace_id, span_id, False, flags, trace_state, True))
                )
            return trace.NonRecordingSpan(
                trace.SpanContext(trace_id, span_id, False, flags, trace_state)
            )
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
        bits = (1 if result.decision.is_sampled() else 0) | (2 if random_id else 0)
        return trace.NonRecordingSpan(
            trace.SpanContext(trace_id, span_id, False, _FLAGS[bits], result.trace_state)
        )


class LeanTracer(_PlainTracer):
    """A tracer that makes no span objects unseen, and cheap ones when spans are exported.

    Without a processor a span is seen only through its ids (the ``traceparent`` header, the
    log line's ``trace_id``/``span_id``), so then only those are made: a ``NonRecordingSpan``
    with the ids and flags the SDK would have given it (a new span id; the parent's trace id,
    or a new one for a root; the sampler's decision; a ParentBased sampler with the stock
    parent delegates follows the parent without being asked, as it would answer, and the SDK's
    ALWAYS_ON, ALWAYS_OFF and TraceIdRatioBased are answered for too: see ``_bounds``).

    With processors, a span is made as the SDK's tracer makes it (trace id for a root, the
    sampler asked with the same arguments, then the span id; the sampler's trace state and
    attributes; DROP gives a ``NonRecordingSpan``; the stock samplers above are answered for:
    the decision and trace state they would give, the caller's attributes),
    but a recording one is a ``LeanSpan`` when ``SpanRecorder.applies``: only the SDK's
    SimpleSpanProcessor/BatchSpanProcessor in the SDK's synchronous processor, the tracer
    enabled, no internal SDK span metrics, no attribute length limit. A span started with
    links, or on any other set-up, is the SDK's, as is every span when ``fast_paths()`` is off.
    """

    def __init__(self, delegate: trace.Tracer, provider: Any) -> None:  # noqa: ANN401 - SDK
        """Wrap ``delegate`` (a tracer of ``provider``)."""
        self._delegate = delegate
        if not fast_paths().enabled:  # an SDK the mirrors are not verified on: always delegate
            provider = None
        # The SDK's own list of span processors, read on each span so a later
        # add_span_processor() takes effect; no SDK provider: always delegate.
        self._processors = getattr(provider, "_active_span_processor", None)
        self._sampler = getattr(provider, "sampler", None)
        self._ids = getattr(provider, "id_generator", None)
        usable = (
            self._sampler is not None
            and self._ids is not None
            and hasattr(self._processors, "_span_processors")
            and not getattr(provider, "_disabled", False)
        )
        self._usable = usable
        self._follows_parent = _follows_parent(self._sampler)
        self._root_bound, self._parent_bound = _bounds(self._sampler)
        self._random_root = bool(usable and self._ids.is_trace_id_random())  # type: ignore[union-attr] # set whenever _usable, which the caller checked
        self._recorder = _recorder(delegate, provider) if usable else None
        self._lean_ids = usable and _lean_ids(self._ids)
        # Without a processor a span is only its ids: exactly what IdsTracer makes.
        self._ids_only = (
            IdsTracer(self._ids, self._sampler, follows_parent=self._follows_parent)
            if usable
            else None
        )

    def _recorded(
        self,
        recorder: SpanRecorder,
        name: str,
        context: otel_context.Context | None,
        *,
        kind: trace.SpanKind,
        attributes: Attributes,
        start_time: int | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> trace.Span:
        """Make the span the SDK's tracer would, recording into a LeanSpan (no links given)."""
        parent: trace.SpanContext | None = span_in(context).get_span_context()
        if parent is not None and not isinstance(parent, trace.SpanContext):
            raise TypeError("parent_span_context must be a SpanContext or None.")
        if parent is not None:
            # A SpanContext is typed as its tuple: unpacked instead of property calls.
            trace_id, _, _, flags, trace_state, valid = parent
            if not valid:
                parent = None
        if parent is None:
            trace_id, random_id = self._ids.generate_trace_id(), self._random_root  # type: ignore[union-attr] # set whenever _usable, which the caller checked
        else:
            random_id = flags & _RANDOM_ID != 0
        bound = self._root_bound if parent is None else self._parent_bound
        if parent is not None and self._follows_parent:
            # What the stock ParentBased answers: ALWAYS_ON / ALWAYS_OFF by the parent's flag.
            sampled = recording = flags & _SAMPLED != 0
            span_attributes: Mapping[str, Any] = (
                _NO_ATTRIBUTES if attributes is None else attributes
            )
        elif bound is not None:
            # What the sampler would answer (see _bounds); a valid parent's trace state is kept.
            sampled = recording = (trace_id & _LOW_BITS) < bound
            span_attributes = _NO_ATTRIBUTES if attributes is None else attributes
            if parent is None:
                trace_state = trace.DEFAULT_TRACE_STATE
        else:
            result = self._sampler.should_sample(  # type: ignore[union-attr] # set whenever _usable, which the caller checked
                context, trace_id, name, kind, attributes, ()
            )
            sampled, recording = result.decision.is_sampled(), result.decision.is_recording()
            span_attributes, trace_state = result.attributes, result.trace_state
        flags = _FLAGS[(1 if sampled else 0) | (2 if random_id else 0)]
        ids: Any = self._ids
        if self._lean_ids:  # as in IdsTracer: the trace id is a valid parent's or a new one
            span_id = random.getrandbits(64) or ids.generate_span_id()
            span_context = _new_tuple(
                _SpanContext, (trace_id, span_id, False, flags, trace_state, True)
            )
        else:
            span_context = trace.SpanContext(
                trace_id, ids.generate_span_id(), False, flags, trace_state
            )
        if not recording:
            return trace.NonRecordingSpan(span_context)
        return LeanSpan(
            recorder,
            name,
            span_context,
            parent=parent,
            kind=kind,
            attributes=span_attributes,
            start_time=start_time,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )

    def start_span(  # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        """Start a span (see the class docstring for when it is only ids, when a LeanSpan)."""
        if self._usable:
            processors = self._processors._span_processors  # type: ignore[union-attr] # set whenever _usable, which the caller checked
            if not processors:
                return self._ids_only.start_span(name, context, kind, attributes, links)  # type: ignore[union-attr] # set whenever _usable
            recorder = self._recorder
            if not links and recorder is not None and recorder.applies(processors):
                return self._recorded(
                    recorder,
                    name,
                    context,
                    kind=kind,
                    attributes=attributes,
                    start_time=start_time,
                    record_exception=record_exception,
                    set_status_on_exception=set_status_on_exception,
                )
        return self._delegate.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
