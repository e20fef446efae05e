"""The outcome table: what the bridge does with each answer of the ingest server.

Written once, as data: a pure function from the answer (an HTTP status code, or the kind of
transport failure when there was no answer) to the action. Nothing else in the bridge decides
whether an entry is acked, dead-lettered, retried or held behind the breaker.

=================================  ==============  ==============================================
answer                             action          what happens
=================================  ==============  ==============================================
any 2xx                            ack             the server has it; an odd body is a WARNING
409                                ack_duplicate   the server already has this idempotency key
409/412, problem stale-lease       fenced          another replica owns the shard: no ack, no
                                                   dead letter, the shard is dropped at once
401, 403                           systemic        credentials or clock: breaker open, no ack
3xx                                systemic        a redirect: the URL is wrong or moved
404, 405                           systemic        wrong OUTBOUND_SERVER_URL or path
407                                systemic        a proxy wants credentials
421, 426                           systemic        wrong server / protocol for this URL
TLS or certificate failure         systemic        trust: OUTBOUND_CA_BUNDLE, the certificate
400, 413, 422, other 4xx           dead_letter     the server judged this signal
408, 425, 429, 5xx, 1xx            transient       retried with backoff, breaker counts it
timeout, connect, protocol         transient       retried with backoff, breaker counts it
=================================  ==============  ==============================================

``OUTBOUND_SUCCESS_STATUSES``, ``OUTBOUND_SYSTEMIC_STATUSES`` and ``OUTBOUND_REJECT_STATUSES``
replace the default code lists; a list left unset keeps its defaults minus every code named in a
list that is set, and no code may be named in two lists that are set.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_REJECT",
    "DEFAULT_SUCCESS",
    "DEFAULT_SYSTEMIC",
    "DEFAULT_TABLE",
    "STALE_LEASE_STATUSES",
    "Action",
    "OutcomeTable",
    "TransportFailure",
    "Verdict",
    "parse_statuses",
]

STATUS_MIN: Final = 100
STATUS_MAX: Final = 599


class Action(enum.StrEnum):
    """What happens to the entry after one answer."""

    ACK = "ack"
    ACK_DUPLICATE = "ack_duplicate"
    SYSTEMIC = "systemic"
    DEAD_LETTER = "dead_letter"
    TRANSIENT = "transient"
    FENCED = "fenced"


class TransportFailure(enum.StrEnum):
    """Ways a POST can end without a usable HTTP status."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    CONNECT_TIMEOUT = "connect_timeout"
    PROTOCOL = "protocol"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The action for one answer and, for a systemic one, the likely cause in plain words."""

    action: Action
    cause: str = ""


DEFAULT_SUCCESS: Final = frozenset(range(200, 300))
DEFAULT_SYSTEMIC: Final = frozenset({*range(300, 400), 401, 403, 404, 405, 407, 421, 426})
_DUPLICATE: Final = 409
# The statuses a stale-lease refusal (problem type ``...stale-lease``) may come with.
STALE_LEASE_STATUSES: Final = frozenset({409, 412})
_TRANSIENT_4XX: Final = frozenset({408, 425, 429})
DEFAULT_REJECT: Final = frozenset(range(400, 500)) - DEFAULT_SYSTEMIC - _TRANSIENT_4XX - {409}

_CAUSES: Final[dict[int, str]] = {
    401: "credentials or clock: the server refused the signature; check HMAC_PRODUCER_SECRET / "
    "HMAC_PRODUCER_KEY_ID match the server and the host clock (NTP)",
    403: "credentials: the server refuses this producer or key (PRODUCER_ID, "
    "HMAC_PRODUCER_KEY_ID), or the host clock",
    404: "wrong URL: check OUTBOUND_SERVER_URL (the bridge appends the ingest path)",
    405: "wrong URL: the endpoint does not take POST; check OUTBOUND_SERVER_URL",
    407: "proxy: a proxy on the way wants credentials",
    421: "wrong server: the connection reached a server that does not serve this host",
    426: "protocol: the server wants another protocol (https?); check OUTBOUND_SERVER_URL",
}
_REDIRECT_CAUSE: Final = (
    "redirect: the endpoint moved or the URL is wrong (the bridge never follows redirects "
    "with a signed body); check OUTBOUND_SERVER_URL"
)
_TLS_CAUSE: Final = (
    "TLS trust: the server certificate is not trusted or does not match; check "
    "OUTBOUND_CA_BUNDLE, the server certificate and OUTBOUND_CLIENT_CERT"
)
_OTHER_SYSTEMIC_CAUSE: Final = "configured in OUTBOUND_SYSTEMIC_STATUSES"
_TRANSIENT: Final = Verdict(Action.TRANSIENT)


def parse_statuses(text: str) -> list[int]:
    """Parse ``"200-299,304,4xx"`` into sorted status codes; ValueError naming what is wrong."""
    codes: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if len(item) == 3 and item[0].isdigit() and item[1:].lower() == "xx":
            low = int(item[0]) * 100
            codes.update(range(low, low + 100))
            continue
        first, sep, last = item.partition("-")
        if not (first.isdigit() and (not sep or last.isdigit())):
            raise ValueError(f"{item!r} is not a status code, a range like 200-299, or 2xx")
        low, high = int(first), int(last) if sep else int(first)
        if low > high:
            raise ValueError(f"range {item!r} is empty")
        codes.update(range(low, high + 1))
    for code in codes:
        if not STATUS_MIN <= code <= STATUS_MAX:
            raise ValueError(f"{code} is not an HTTP status code ({STATUS_MIN}-{STATUS_MAX})")
    return sorted(codes)


class OutcomeTable:
    """The answer -> action table; built once from the three code lists."""

    __slots__ = ("_verdicts", "reject", "success", "systemic")

    def __init__(
        self,
        *,
        success: Collection[int] | None = None,
        systemic: Collection[int] | None = None,
        reject: Collection[int] | None = None,
    ) -> None:
        given = {
            name: frozenset(codes)
            for name, codes in (("success", success), ("systemic", systemic), ("reject", reject))
            if codes is not None
        }
        for name, codes in given.items():
            bad = sorted(c for c in codes if not STATUS_MIN <= c <= STATUS_MAX)
            if bad:
                raise ValueError(f"{name}: {bad[0]} is not an HTTP status code")
        names = list(given)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                both = sorted(given[first] & given[second])
                if both:
                    raise ValueError(f"status {both[0]} is in both the {first} and {second} lists")
        named = frozenset().union(*given.values()) if given else frozenset()
        self.success: frozenset[int] = given.get("success", DEFAULT_SUCCESS - named)
        self.systemic: frozenset[int] = given.get("systemic", DEFAULT_SYSTEMIC - named)
        self.reject: frozenset[int] = given.get("reject", DEFAULT_REJECT - named)
        # Every status judged once: the table answers each POST with a lookup, not a new Verdict.
        self._verdicts = {code: self._judge(code) for code in range(STATUS_MIN, STATUS_MAX + 1)}

    def for_status(self, code: int) -> Verdict:
        """Return the action for an HTTP status code (any integer; out of range is transient)."""
        try:
            return self._verdicts[code]
        except KeyError:
            return _TRANSIENT

    def _judge(self, code: int) -> Verdict:
        """Decide one status code from the three code lists."""
        if code in self.success:
            return Verdict(Action.ACK)
        if code in self.systemic:
            if 300 <= code < 400:
                return Verdict(Action.SYSTEMIC, _REDIRECT_CAUSE)
            return Verdict(Action.SYSTEMIC, _CAUSES.get(code, _OTHER_SYSTEMIC_CAUSE))
        if code in self.reject:
            return Verdict(Action.DEAD_LETTER)
        if code == _DUPLICATE:
            return Verdict(Action.ACK_DUPLICATE)
        return Verdict(Action.TRANSIENT)

    def for_answer(self, code: int, *, stale_lease: bool) -> Verdict:
        """Return the action for an answer whose body was read: a stale-lease refusal is fenced.

        ``stale_lease``: the body is a problem+json of type ``...stale-lease``
        (:func:`bridge.core.fencing.stale_lease_token`); it counts only on 409 or 412, whatever
        the code lists say, since it speaks of the lease and not of the signal.
        """
        if stale_lease and code in STALE_LEASE_STATUSES:
            return Verdict(Action.FENCED)
        return self.for_status(code)

    def for_failure(self, failure: TransportFailure) -> Verdict:
        """Return the action for a POST that ended without an HTTP status."""
        if failure is TransportFailure.TLS:
            return Verdict(Action.SYSTEMIC, _TLS_CAUSE)
        return Verdict(Action.TRANSIENT)

    def summary(self) -> list[tuple[str, Action]]:
        """Return the status rows as runs of codes with one action (``"300-399"``), for docs."""
        runs: list[tuple[str, Action]] = []
        start = STATUS_MIN
        action = self.for_status(STATUS_MIN).action
        for code in range(STATUS_MIN + 1, STATUS_MAX + 2):
            now = self.for_status(code).action if code <= STATUS_MAX else None
            if now is not action:
                last = code - 1
                runs.append((str(start) if start == last else f"{start}-{last}", action))
                if now is not None:
                    start, action = code, now
        return runs

    def rows(self) -> Iterable[tuple[str, Action]]:
        """Every status 100-599 and every transport failure with its action (for docs, tests)."""
        for code in range(STATUS_MIN, STATUS_MAX + 1):
            yield str(code), self.for_status(code).action
        for failure in TransportFailure:
            yield failure.value, self.for_failure(failure).action


DEFAULT_TABLE: Final = OutcomeTable()
