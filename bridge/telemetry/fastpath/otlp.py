"""A hand-written OTLP protobuf encoder for spans.

``encode_spans`` writes an ``ExportTraceServiceRequest`` straight to bytes: the SDK builds a
pb2 object per span, attribute and value (~33 us a span); this writer caches what repeats from
span to span (resource and scope headers, span names, key prefixes, whole KeyValue pairs) and
parses to a message equal to the SDK's (``tests/telemetry/test_otlp.py`` checks many shapes).
Values other than plain str/bool/int/float/bytes/None and arrays of them go through the SDK's
own ``_encode_value``. ``bridge.telemetry.fastpath.otlp_export`` sends what it writes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = ["encode_spans"]

_logger = logging.getLogger("bridge.otlp")

_M64: Final = (1 << 64) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
# Bounded caches: cleared when full (the next batches refill what still repeats).
_CACHE_MAX: Final = 4096
_HEADER_CACHE_MAX: Final = 64

# Span.flags as the SDK sets them: "has is_remote" always, "is_remote" for a remote parent.
_FLAG_HAS_IS_REMOTE: Final = 0x100
_FLAG_IS_REMOTE: Final = 0x200
_SPAN_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", _FLAG_HAS_IS_REMOTE)  # field 16
_SPAN_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", _FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE)
_LINK_FLAGS_LOCAL: Final = b"\x35" + struct.pack("<I", _FLAG_HAS_IS_REMOTE)  # Link field 6
_LINK_FLAGS_REMOTE: Final = b"\x35" + struct.pack("<I", _FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE)

# Span.kind (field 6): OTLP numbers the SDK's kinds from 1 (0 is UNSPECIFIED).
# Keyed by id(): an Enum member hashes in Python code, id() and int hashing do not.
_KIND_FIELD: Final[dict[int, bytes]] = {
    id(kind): bytes((0x30, kind.value + 1)) for kind in SpanKind
}
_EMPTY_STATUS: Final = b"\x7a\x00"  # field 15, an empty Status (the SDK always sets one)
_UNSET: Final = StatusCode.UNSET
_DEFAULT_TRACE_STATE: Final = DEFAULT_TRACE_STATE  # the empty state most span contexts share
_STATUS_CODE_FIELD: Final = {code: bytes((0x18, code.value)) for code in StatusCode}  # Status.code
_ANY_TRUE: Final = b"\x10\x01"
_ANY_FALSE: Final = b"\x10\x00"

_DOUBLE: Final = struct.Struct("<Bd")  # AnyValue.double_value: tag 0x21, little-endian double
_FIXED64: Final = struct.Struct("<BQ")
_TIMES: Final = struct.Struct("<BQBQ")  # Span start (0x39) and end (0x41) time, fixed64 each
_SPAN_IDS: Final = struct.Struct(">2sQQ2sQ")  # trace_id (0x0a, 16 bytes) and span_id (0x12, 8)


def _varint_slow(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS: Final = tuple(_varint_slow(n) for n in range(4096))


def _varint(value: int) -> bytes:
    """Encode a non-negative integer as a varint (a table lookup below 4096)."""
    if value < 4096:
        return _SMALL_VARINTS[value]
    return _varint_slow(value)


def _field(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited field: ``tag``, the payload's length, the payload."""
    size = len(payload)
    return tag + (_SMALL_VARINTS[size] if size < 4096 else _varint_slow(size)) + payload


def _string_field(tag: bytes, text: str) -> bytes:
    """One string field (UTF-8), or nothing for the empty string (proto3 default)."""
    return _field(tag, text.encode()) if text else b""


# --- attribute values ------------------------------------------------------------------------


def _sdk_any_value(value: object) -> bytes:
    """AnyValue bytes from the SDK's own encoder, for the rare value types written here."""
    from opentelemetry.exporter.otlp.proto.common._internal import (  # noqa: PLC0415 - rare
        _encode_value,
    )

    return bytes(_encode_value(value).SerializePartialToString())


def _any_value(value: object) -> bytes:
    """Encode one attribute value as an AnyValue message (as the SDK's ``_encode_value``).

    Raises what the SDK's encoder raises for a value it cannot encode (an int outside int64),
    so the caller skips that attribute as the SDK does.
    """
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode())  # type: ignore[attr-defined] # type(value) is str, checked above
    if kind is bool:
        return _ANY_TRUE if value else _ANY_FALSE
    if kind is int:
        number: int = value  # type: ignore[assignment] # type(value) is int, checked above
        if not _I64_MIN <= number <= _I64_MAX:
            raise ValueError(f"integer attribute out of int64 range ({number.bit_length()} bits)")
        return b"\x18" + _varint(number & _M64)
    if kind is float:
        return _DOUBLE.pack(0x21, value)
    if kind is bytes:
        return _field(b"\x3a", value)  # type: ignore[arg-type] # type(value) is bytes, checked above
    if kind is tuple or kind is list:
        items: Sequence[object] = value  # type: ignore[assignment] # a tuple or list, checked above
        array = b"".join([_field(b"\x0a", _any_value(item)) for item in items])
        return _field(b"\x2a", array)
    if value is None:
        return b""
    return _sdk_any_value(value)


_KEY_PREFIXES: dict[str, bytes] = {}


def _key_value(key: str, value: object) -> bytes:
    """Encode one attribute as a KeyValue message, length-prefixed."""
    prefix = _KEY_PREFIXES.get(key)
    if prefix is None:
        if len(_KEY_PREFIXES) >= _CACHE_MAX:
            _KEY_PREFIXES.clear()
        prefix = _KEY_PREFIXES[key] = _field(b"\x0a", key.encode())
    message = prefix + _field(b"\x12", _any_value(value))
    size = len(message)
    return (_SMALL_VARINTS[size] if size < 4096 else _varint_slow(size)) + message


class _AttributeField:
    """Writes attributes as one repeated KeyValue field; caches pairs with str or int values.

    A pair's cache key is (key, value) for values of exactly ``str`` or ``int`` only: those
    never compare equal across the two types (``True == 1`` and ``1 == 1.0`` would). A pair is
    cached the second time it is seen, so values unique to a span (message ids) do not evict
    the ones that repeat.
    """

    __slots__ = ("cache", "seen", "tag")

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.cache: dict[tuple[str, object], bytes] = {}
        self.seen: set[tuple[str, object]] = set()

    def write(self, attributes: Mapping[str, object] | None, parts: list[bytes]) -> None:
        """Append one field per attribute to ``parts``; skip (and log) what cannot encode."""
        if not attributes:
            return
        # A mappingproxy over the SDK's BoundedAttributes: its copy() is one C-level dict copy,
        # cheaper than items() through the Mapping mixins (a Python call per key).
        try:  # noqa: SIM105 - contextlib.suppress would cost more than the copy saves
            attributes = attributes.copy()  # type: ignore[attr-defined] # a mappingproxy's copy(); AttributeError handled
        except AttributeError:
            pass
        cache = self.cache
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is int:
                pair = (key, value)
                encoded = cache.get(pair)
                if encoded is None:
                    encoded = self._encode(key, value)
                    self._remember(pair, encoded)
                parts.append(encoded)
            else:
                parts.append(self._encode(key, value))

    def _remember(self, pair: tuple[str, object], encoded: bytes) -> None:
        """Cache ``pair`` if it was seen before; both structures are cleared when full."""
        seen = self.seen
        if pair in seen:
            cache = self.cache
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[pair] = encoded
        else:
            if len(seen) >= _CACHE_MAX:
                seen.clear()
            seen.add(pair)

    def _encode(self, key: str, value: object) -> bytes:
        """Encode one attribute field, or nothing (and a log line) if it cannot encode."""
        try:
            return self.tag + _key_value(key, value)
        except Exception as error:
            # The key and the error's type only: a value (or its repr) may be confidential.
            _logger.warning("span attribute %r not exported: %s", key, type(error).__name__)
            return b""


_SPAN_ATTRIBUTES: Final = _AttributeField(b"\x4a")  # Span.attributes (field 9)
_EVENT_ATTRIBUTES: Final = _AttributeField(b"\x1a")  # Span.Event.attributes (field 3)
_LINK_ATTRIBUTES: Final = _AttributeField(b"\x22")  # Span.Link.attributes (field 4)
_SCOPE_ATTRIBUTES: Final = _AttributeField(b"\x1a")  # InstrumentationScope.attributes (3)
_RESOURCE_ATTRIBUTES: Final = _AttributeField(b"\x0a")  # Resource.attributes (field 1)


# --- spans -----------------------------------------------------------------------------------

_NAMES: dict[str, bytes] = {}


def _name_field(name: str) -> bytes:
    """Span.name (field 5), cached: a service has few span names."""
    encoded = _NAMES.get(name)
    if encoded is None:
        if len(_NAMES) >= _CACHE_MAX:
            _NAMES.clear()
        encoded = _NAMES[name] = _string_field(b"\x2a", name)
    return encoded


def _event(event: Any) -> bytes:  # noqa: ANN401 - opentelemetry.sdk.trace.Event
    """One Span.Event message."""
    parts: list[bytes] = []
    if event.timestamp:
        parts.append(_FIXED64.pack(0x09, event.timestamp))
    parts.append(_string_field(b"\x12", event.name))
    _EVENT_ATTRIBUTES.write(event.attributes, parts)
    if event.dropped_attributes:
        parts.append(b"\x20" + _varint(event.dropped_attributes))
    return b"".join(parts)


def _link(link: Link) -> bytes:
    """One Span.Link message (no trace_state, as the SDK encodes it)."""
    context = link.context
    parts = [
        _SPAN_IDS.pack(
            b"\x0a\x10",
            context.trace_id >> 64,
            context.trace_id & _M64,
            b"\x12\x08",
            context.span_id,
        ),
    ]
    _LINK_ATTRIBUTES.write(link.attributes, parts)
    dropped = link.dropped_attributes
    if dropped:
        parts.append(b"\x28" + _varint(dropped))
    parts.append(_LINK_FLAGS_REMOTE if context.is_remote else _LINK_FLAGS_LOCAL)
    return b"".join(parts)


def _status_field(status: Status) -> bytes:
    """Span.status (field 15): always present, as the SDK sets it, even when empty."""
    code = status.status_code
    message = status.description
    if code is _UNSET and not message:
        return _EMPTY_STATUS
    body = _string_field(b"\x12", message) if message else b""
    if code is not _UNSET:
        body += _STATUS_CODE_FIELD[code]
    return _field(b"\x7a", body)


def _span(span: ReadableSpan) -> bytes:
    """One Span message, fields as the SDK's ``_encode_span`` sets them."""
    context: SpanContext = span.get_span_context()  # type: ignore[assignment] # the SDK types it Optional; a ReadableSpan always has one
    trace_id = context.trace_id
    parts = [
        _SPAN_IDS.pack(b"\x0a\x10", trace_id >> 64, trace_id & _M64, b"\x12\x08", context.span_id),
        _NAMES.get(span.name) or _name_field(span.name),
        _KIND_FIELD[id(span.kind)],
    ]
    trace_state = context.trace_state
    if trace_state is not None and trace_state is not _DEFAULT_TRACE_STATE and len(trace_state):
        parts.append(
            _field(b"\x1a", ",".join([f"{k}={v}" for k, v in trace_state.items()]).encode())
        )
    parent = span.parent
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(_SPAN_FLAGS_REMOTE if parent.is_remote else _SPAN_FLAGS_LOCAL)
    else:
        parts.append(_SPAN_FLAGS_LOCAL)
    start, end = span.start_time, span.end_time
    if start and end:
        parts.append(_TIMES.pack(0x39, start, 0x41, end))
    elif start or end:
        parts.append(_FIXED64.pack(0x39, start) if start else _FIXED64.pack(0x41, end))
    _SPAN_ATTRIBUTES.write(span.attributes, parts)
    dropped = span.dropped_attributes
    if dropped:
        parts.append(b"\x50" + _varint(dropped))
    events = span.events
    if events:
        parts.extend([_field(b"\x5a", _event(event)) for event in events])
    dropped = span.dropped_events
    if dropped:
        parts.append(b"\x60" + _varint(dropped))
    links = span.links
    if links:
        parts.extend([_field(b"\x6a", _link(link)) for link in links])
    dropped = span.dropped_links
    if dropped:
        parts.append(b"\x70" + _varint(dropped))
    status = span.status
    if status is not None:
        parts.append(_status_field(status))
    return b"".join(parts)


# --- resource and scope headers --------------------------------------------------------------

_RESOURCES: dict[int, tuple[Resource, bytes]] = {}
_SCOPES: dict[int, tuple[InstrumentationScope | None, bytes]] = {}


def _resource_header(resource: Resource) -> bytes:
    """ResourceSpans.resource (field 1), cached per Resource object."""
    entry = _RESOURCES.get(id(resource))
    if entry is not None and entry[0] is resource:
        return entry[1]
    parts: list[bytes] = []
    _RESOURCE_ATTRIBUTES.write(resource.attributes, parts)
    header = _field(b"\x0a", b"".join(parts))
    if len(_RESOURCES) >= _HEADER_CACHE_MAX:
        _RESOURCES.clear()
    _RESOURCES[id(resource)] = (resource, header)
    return header


def _scope_header(scope: InstrumentationScope | None) -> bytes:
    """ScopeSpans.scope (field 1), cached per InstrumentationScope object."""
    entry = _SCOPES.get(id(scope))
    if entry is not None and entry[0] is scope:
        return entry[1]
    parts: list[bytes] = []
    if scope is not None:
        parts.append(_string_field(b"\x0a", scope.name))
        if scope.version:
            parts.append(_string_field(b"\x12", scope.version))
        _SCOPE_ATTRIBUTES.write(scope.attributes, parts)
    header = _field(b"\x0a", b"".join(parts))
    if len(_SCOPES) >= _HEADER_CACHE_MAX:
        _SCOPES.clear()
    _SCOPES[id(scope)] = (scope, header)
    return header


class _ScopeGroup:
    """The encoded spans of one instrumentation scope within a batch."""

    __slots__ = ("scope", "spans")

    def __init__(self, scope: InstrumentationScope | None) -> None:
        self.scope = scope
        self.spans: list[bytes] = []


class _ResourceGroup:
    """The scopes of one resource within a batch, in first-seen order (as the SDK groups)."""

    __slots__ = ("by_id", "resource", "scopes")

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.scopes: list[_ScopeGroup] = []
        self.by_id: dict[int, _ScopeGroup] = {}

    def scope_group(self, scope: InstrumentationScope | None) -> _ScopeGroup:
        """Return the group of ``scope``: equal scopes share one, as the SDK's dict keys do."""
        group = self.by_id.get(id(scope))
        if group is None:
            group = next((g for g in self.scopes if g.scope == scope), None)
            if group is None:
                group = _ScopeGroup(scope)
                self.scopes.append(group)
            self.by_id[id(scope)] = group
        return group

    def encode(self) -> bytes:
        """Encode this group as one ResourceSpans message."""
        parts = [_resource_header(self.resource)]
        for group in self.scopes:
            scope_parts = [_scope_header(group.scope)]
            scope_parts.extend([_field(b"\x12", span) for span in group.spans])
            schema_url = group.scope.schema_url if group.scope is not None else None
            scope_parts.append(_string_field(b"\x1a", schema_url or ""))
            parts.append(_field(b"\x12", b"".join(scope_parts)))
        parts.append(_string_field(b"\x1a", self.resource.schema_url))
        return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """Serialize ``spans`` as one ExportTraceServiceRequest (what the SDK's encoder sends).

    Spans are grouped by resource, then by instrumentation scope, in first-seen order; equal
    resources (or scopes) held in different objects share one group, as in the SDK.
    """
    groups: list[_ResourceGroup] = []
    by_id: dict[int, _ResourceGroup] = {}
    last_resource: object = None
    last_scope: object = None
    last_spans: list[bytes] = []
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope
        if resource is not last_resource or scope is not last_scope:
            group = by_id.get(id(resource))
            if group is None:
                group = next((g for g in groups if g.resource == resource), None)
                if group is None:
                    group = _ResourceGroup(resource)
                    groups.append(group)
                by_id[id(resource)] = group
            last_resource, last_scope = resource, scope
            last_spans = group.scope_group(scope).spans
        last_spans.append(_span(span))
    return b"".join([_field(b"\x0a", group.encode()) for group in groups])
