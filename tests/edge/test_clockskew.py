"""The server clock skew: the pure estimator, and a reference server whose clock is 400 s off."""

from __future__ import annotations

import email.utils
import logging
import re
import time
from typing import Final

import pytest
import redis.asyncio as aioredis

from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.edge.clockskew import SkewEstimator, describe_skew, parse_http_date
from bridge.errors import AuthError
from bridge.streams.producer import publish
from bridge.telemetry.logs import JsonFormatter
from tests import support
from tests.fixtures_ingest import (
    KEY_ID,
    TEST_SECRET,
    MetricsCapture,
    make_outbound_config,
    make_signal,
    metric_points,
)
from tests.support import bridge_config, eventually, running

OFF_S: Final = 400.0
NOW: Final = 1_800_000_000.0


def _date(epoch_s: float) -> str:
    return email.utils.formatdate(epoch_s, usegmt=True)


def test_parse_http_date_reads_the_rfc_forms_and_refuses_garbage() -> None:
    """IMF-fixdate and the obsolete RFC 850 form parse; anything else is None, never an error."""
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0
    for bad in ("", "yesterday", "Sun, 99 Nov 1994 08:49:37 GMT", "\x00", "1" * 500):
        assert parse_http_date(bad) is None


def test_first_answer_sets_the_skew_and_later_ones_smooth_it() -> None:
    """Skew is server minus local at the request's midpoint; a jump is followed, not copied."""
    estimator = SkewEstimator()
    assert estimator.skew_s is None
    estimator.observe(_date(NOW + OFF_S), NOW - 0.1, NOW + 0.1)
    assert estimator.skew_s == pytest.approx(OFF_S + 0.5, abs=0.01)
    estimator.observe(_date(NOW + 1), NOW + 1, NOW + 1)  # NTP fixed the host clock
    assert OFF_S / 2 < (estimator.skew_s or 0) < OFF_S
    for i in range(2, 60):
        estimator.observe(_date(NOW + i), NOW + i, NOW + i)
    assert estimator.skew_s == pytest.approx(0.5, abs=0.1)


def test_a_repeated_or_unusable_date_changes_nothing() -> None:
    """The same Date text is parsed once; a missing or garbled one is ignored."""
    estimator = SkewEstimator()
    estimator.observe(_date(NOW), NOW, NOW)
    first = estimator.skew_s
    estimator.observe(_date(NOW), NOW + 100, NOW + 100)  # same text: not re-read
    estimator.observe(None, NOW + 100, NOW + 100)
    estimator.observe("not a date", NOW + 100, NOW + 100)
    assert estimator.skew_s == first


def test_warning_is_given_once_and_again_only_after_recovery() -> None:
    """Over 30 s: one warning; none while it stays; another after it fell under 15 s and rose."""
    estimator = SkewEstimator(alpha=1.0)
    estimator.observe(_date(NOW + 10), NOW, NOW)
    assert estimator.take_warning() is None
    estimator.observe(_date(NOW - 45), NOW, NOW)
    assert estimator.take_warning() == pytest.approx(-44.5)
    assert estimator.beyond_warning
    estimator.observe(_date(NOW - 44), NOW, NOW)
    assert estimator.take_warning() is None
    estimator.observe(_date(NOW + 20), NOW, NOW)
    assert estimator.take_warning() is None  # 20.5 s: not yet recovered (needs < 15 s)
    estimator.observe(_date(NOW + 5), NOW, NOW)
    assert estimator.take_warning() is None
    estimator.observe(_date(NOW + 31), NOW, NOW)
    assert estimator.take_warning() == pytest.approx(31.5)


def test_describe_skew_says_which_way() -> None:
    """The operator's sentence names the size and the direction."""
    assert describe_skew(412.4) == "server clock is 412 s ahead of ours: fix NTP"
    assert describe_skew(-35.0) == "server clock is 35 s behind ours: fix NTP"


@pytest.fixture
def skewed_app() -> IngestApp:
    """A reference server whose clock runs 400 s ahead of this host's."""
    return IngestApp(
        secrets={KEY_ID: TEST_SECRET, support.KEY_ID: support.SECRET.encode()},
        clock=lambda: time.time() + OFF_S,
    )


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(r) for r in caplog.records)


_AHEAD: Final = re.compile(r"server clock is (399|400|401) s ahead of ours: fix NTP")


async def test_a_401_from_a_server_400_s_ahead_names_the_skew_and_the_failed_check(
    skewed_app: IngestApp,
    metrics_capture: MetricsCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The 401 names no check, the error says how far off the clock is, the gauge shows ~400."""
    caplog.set_level(logging.WARNING)
    with serve_in_thread(skewed_app) as url:
        config = make_outbound_config(url)
        async with HmacClient(config, metrics=metrics_capture.metrics) as client:
            for _ in range(2):
                with pytest.raises(AuthError) as refused:
                    await client.post_signal(make_signal())
            assert _AHEAD.search(str(refused.value))
            assert isinstance(refused.value.details, dict)
            assert refused.value.details == {"detail": "invalid signature"}
            assert skewed_app.refusals == {"timestamp outside window": 2}
            assert client.clock_skew_s == pytest.approx(OFF_S, abs=1.5)
            [point] = metric_points(metrics_capture.reader, "signals_server_clock_skew_seconds")
            assert point.value == pytest.approx(OFF_S, abs=1.5)
            assert point.attributes == {"server.address": "127.0.0.1"}
    warnings = [r for r in caplog.records if _AHEAD.search(r.getMessage())]
    assert [r.levelname for r in warnings] == ["WARNING"]  # once, not per answer


async def test_the_worker_error_line_names_the_measured_skew(
    skewed_app: IngestApp,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consumer's systemic ERROR line names 'server clock is 400 s ahead of ours: fix NTP'."""
    caplog.set_level(logging.INFO)
    with serve_in_thread(skewed_app) as url:
        await publish(redis, support.make_signal(1), stream=stream_name)
        async with running(redis, bridge_config(url, redis_url, stream_name)):
            await eventually(
                lambda: any(
                    r.levelname == "ERROR"
                    and r.getMessage().startswith("ingest server refuses every signal alike")
                    and _AHEAD.search(r.getMessage())
                    for r in caplog.records
                ),
                what="401 ERROR line with the skew",
            )
    assert re.search(r'"server_clock_skew_s":(399|400|401)[.,}]', _log_text(caplog))
    assert skewed_app.received == []
    assert skewed_app.refusals == {"timestamp outside window": skewed_app.requests_total}


async def test_a_server_in_step_gives_a_small_skew_and_no_warning(
    metrics_capture: MetricsCapture, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a server on the same clock the skew is about zero and nothing is logged."""
    caplog.set_level(logging.WARNING)
    app = IngestApp(secrets={KEY_ID: TEST_SECRET})
    with serve_in_thread(app) as url:
        async with HmacClient(make_outbound_config(url), metrics=metrics_capture.metrics) as client:
            await client.post_signal(make_signal())
            assert abs(client.clock_skew_s or 99) < 1.5
    assert "fix NTP" not in _log_text(caplog)
