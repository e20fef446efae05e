"""PostRecorder counts deliveries per status code with the attributes every attempt has."""

from __future__ import annotations

from opentelemetry import trace

from bridge.core.outcome import DEFAULT_TABLE, Action, OutcomeTable
from bridge.edge.posts import PostRecorder
from bridge.edge.results import Delivered
from tests.fixtures_ingest import MetricsCapture


def test_deliveries_are_counted_and_timed_per_status_code(
    metrics_capture: MetricsCapture,
) -> None:
    """Each status code is its own counter point; the duration has no code, as before."""
    recorder = PostRecorder(metrics_capture.metrics, "producer-1")
    span = trace.INVALID_SPAN
    for code in (201, 200, 201):
        recorder.delivered(span, Delivered(None, code, 0.25), "s-1")
    recorder.record("success", 202, 0.5)
    counted = {
        tuple(sorted((point.attributes or {}).items())): point.value
        for point in metrics_capture.counter("signals_posted_total")
    }
    assert counted == {
        (("http_code", "200"), ("producer_id", "producer-1"), ("result", "success")): 1,
        (("http_code", "201"), ("producer_id", "producer-1"), ("result", "success")): 2,
        (("http_code", "202"), ("producer_id", "producer-1"), ("result", "success")): 1,
    }
    [timed] = metrics_capture.histogram("signals_posted_duration_seconds")
    assert dict(timed.attributes or {}) == {"result": "success", "producer_id": "producer-1"}
    assert (timed.count, timed.sum) == (4, 1.25)


def test_a_status_outside_100_599_is_transient_and_a_lookup_is_the_same_verdict() -> None:
    """The precomputed table answers like the code lists, and any other integer is transient."""
    table = OutcomeTable(success=[200], reject=[400])
    for code in (-1, 0, 99, 600, 10_000):
        assert table.for_status(code).action is Action.TRANSIENT
    assert table.for_status(201).action is Action.TRANSIENT
    assert table.for_status(200) == table.for_status(200)
    assert DEFAULT_TABLE.for_status(302).cause.startswith("redirect:")
    assert DEFAULT_TABLE.for_status(409).action is Action.ACK_DUPLICATE
