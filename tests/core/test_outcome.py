"""The outcome table: every status 100-599 and every transport failure, and its settings."""

from pathlib import Path
from typing import Final

import pytest

from bridge.config.loader import load_config
from bridge.core.outcome import (
    DEFAULT_TABLE,
    Action,
    OutcomeTable,
    TransportFailure,
    parse_statuses,
)
from bridge.errors import ConfigError
from tests.fixtures_ingest import outbound_env

DESIGN: Final = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def _issue_default(code: int) -> Action:
    """The defaults exactly as issue 10 words them, written independently of the module."""
    if 200 <= code <= 299:
        return Action.ACK
    if code == 409:
        return Action.ACK_DUPLICATE
    if 300 <= code <= 399 or code in (401, 403, 404, 405, 407, 421, 426):
        return Action.SYSTEMIC
    if code in (408, 425, 429) or code >= 500 or code < 200:
        return Action.TRANSIENT
    return Action.DEAD_LETTER  # 400, 413, 422 and the other 4xx


@pytest.mark.parametrize("code", range(100, 600))
def test_every_status_code_has_the_documented_action(code: int) -> None:
    """Each of 100-599 maps to the action the issue's defaults give it."""
    assert DEFAULT_TABLE.for_status(code).action is _issue_default(code)


@pytest.mark.parametrize(
    ("failure", "action"),
    [
        (TransportFailure.TIMEOUT, Action.TRANSIENT),
        (TransportFailure.CONNECT, Action.TRANSIENT),
        (TransportFailure.CONNECT_TIMEOUT, Action.TRANSIENT),
        (TransportFailure.PROTOCOL, Action.TRANSIENT),
        (TransportFailure.TLS, Action.SYSTEMIC),
    ],
)
def test_every_transport_failure_has_an_action(failure: TransportFailure, action: Action) -> None:
    """Timeouts, refused connections and broken answers retry; TLS failures are systemic."""
    assert DEFAULT_TABLE.for_failure(failure).action is action
    assert {f.value for f in TransportFailure} == {
        "timeout",
        "connect",
        "connect_timeout",
        "protocol",
        "tls",
    }


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (401, "credentials or clock"),
        (403, "credentials"),
        (301, "redirect"),
        (308, "redirect"),
        (404, "wrong URL"),
        (405, "wrong URL"),
        (407, "proxy"),
        (421, "wrong server"),
        (426, "protocol"),
    ],
)
def test_systemic_answers_name_the_likely_cause(code: int, words: str) -> None:
    """Every systemic default carries a plain-words cause for the one ERROR line."""
    assert words in DEFAULT_TABLE.for_status(code).cause
    assert "OUTBOUND_CA_BUNDLE" in DEFAULT_TABLE.for_failure(TransportFailure.TLS).cause


def test_the_docs_print_the_table() -> None:
    """Every run of codes with its action appears in docs/design.md's outcome table."""
    text = DESIGN.read_text(encoding="utf-8")
    for codes, action in DEFAULT_TABLE.summary():
        assert f"| `{codes}` | `{action.value}` |" in text, codes
    for failure in TransportFailure:
        assert f"| {failure.value} | `{DEFAULT_TABLE.for_failure(failure).action.value}` |" in text


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("200", [200]),
        ("200-202, 204", [200, 201, 202, 204]),
        ("3xx", list(range(300, 400))),
        ("2XX,409", [*range(200, 300), 409]),
        ("", []),
    ],
)
def test_status_lists_parse_codes_ranges_and_classes(text: str, codes: list[int]) -> None:
    """A list is codes, ranges and classes like 2xx, separated by commas."""
    assert parse_statuses(text) == codes


@pytest.mark.parametrize("text", ["99", "600", "2xxx", "abc", "300-200", "-5"])
def test_bad_status_lists_are_refused(text: str) -> None:
    """Codes outside 100-599, empty ranges and words are refused."""
    with pytest.raises(ValueError, match=r"status|range|code"):
        parse_statuses(text)


def test_explicit_lists_replace_defaults_and_defaults_yield() -> None:
    """A set list replaces its defaults; the other lists lose the codes it names."""
    table = OutcomeTable(success=[200, 201, 202], reject=[404, 500])
    assert table.for_status(204).action is Action.TRANSIENT  # no longer in the success list
    assert table.for_status(404).action is Action.DEAD_LETTER  # taken from the systemic defaults
    assert table.for_status(500).action is Action.DEAD_LETTER
    assert table.for_status(301).action is Action.SYSTEMIC
    assert table.for_status(409).action is Action.ACK_DUPLICATE


def test_load_config_reads_the_lists_and_refuses_a_code_in_two() -> None:
    """The three settings are read from the environment; one code in two lists stops the start."""
    env = outbound_env(
        "http://127.0.0.1:9",
        {"OUTBOUND_SUCCESS_STATUSES": "2xx", "OUTBOUND_REJECT_STATUSES": "400-404,422"},
    )
    config = load_config(env=env).outbound
    assert config.success_statuses == list(range(200, 300))
    assert config.reject_statuses == [400, 401, 402, 403, 404, 422]
    env["OUTBOUND_SYSTEMIC_STATUSES"] = "404"
    with pytest.raises(ConfigError, match="404 is in both") as info:
        load_config(env=env)
    assert info.value.variable == "OUTBOUND_REJECT_STATUSES"


def test_a_malformed_status_list_names_the_setting() -> None:
    """A code out of range is refused at load with the variable named."""
    env = outbound_env("http://127.0.0.1:9", {"OUTBOUND_SYSTEMIC_STATUSES": "404,700"})
    with pytest.raises(ConfigError, match="OUTBOUND_SYSTEMIC_STATUSES") as info:
        load_config(env=env)
    assert info.value.variable == "OUTBOUND_SYSTEMIC_STATUSES"


def test_a_status_list_from_the_file_is_checked_too(tmp_path: Path) -> None:
    """The same lists in bridge.toml are validated the same way."""
    path = tmp_path / "bridge.toml"
    path.write_text("[outbound]\nsuccess_statuses = [200, 201]\nreject_statuses = [201]\n")
    with pytest.raises(ConfigError, match="201 is in both"):
        load_config(path, env=outbound_env("http://127.0.0.1:9"))


def test_the_table_refuses_bad_lists_and_lists_every_row() -> None:
    """Direct construction checks codes and overlaps; rows() covers 500 codes and 5 failures."""
    with pytest.raises(ValueError, match="not an HTTP status code"):
        OutcomeTable(success=[200, 600])
    with pytest.raises(ValueError, match="both the success and reject lists"):
        OutcomeTable(success=[200], reject=[200])
    rows = dict(DEFAULT_TABLE.rows())
    assert len(rows) == 500 + len(TransportFailure)
    assert (rows["202"], rows["409"], rows["tls"]) == (
        Action.ACK,
        Action.ACK_DUPLICATE,
        Action.SYSTEMIC,
    )
