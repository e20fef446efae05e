"""Settings declared once: parsing, bounds, `check`'s listing and the table come from the fields."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Final

import msgspec
import pytest

from bridge.config.loader import (
    CHECK_ORDER,
    BridgeConfig,
    declared_settings,
    effective_settings,
    load_config,
    setting_names,
)
from bridge.core.settings import Setting, check_bounds, declared, parse_env
from bridge.errors import ConfigError

BASE_ENV: Final = {
    "HMAC_PRODUCER_SECRET": "declarations-secret-0123456789",
    "OUTBOUND_SERVER_URL": "https://api.example.com",
}


class _Sample(msgspec.Struct, frozen=True, kw_only=True):
    """A settings struct for the declaration machinery alone."""

    count: Annotated[int, Setting("SAMPLE_COUNT", positive=True)] = 1
    ratio: Annotated[float, Setting("SAMPLE_RATIO", ge=0, le=1, note="a share")] = 0.5
    wait_s: Annotated[float, Setting("SAMPLE_WAIT_SECONDS", ge=2.5)] = 3.0
    port: Annotated[int, Setting("SAMPLE_PORT", le=100, note="small", echo=False)] = 10
    name: Annotated[str | None, Setting("SAMPLE_NAME")] = None
    on: Annotated[bool, Setting("SAMPLE_ON")] = False
    plain: int = 0


def test_check_lists_every_declared_setting_once() -> None:
    """`check`'s order names each declared setting exactly once, and nothing else."""
    assert len(set(CHECK_ORDER)) == len(CHECK_ORDER)
    assert set(CHECK_ORDER) == set(declared_settings())
    assert setting_names() == list(CHECK_ORDER)


def test_undeclared_fields_are_not_settings() -> None:
    """Only annotated fields are settings; their parsers follow their types."""
    fields = [item.field for item in declared(_Sample)]
    assert fields == ["count", "ratio", "wait_s", "port", "name", "on"]
    env = {"SAMPLE_COUNT": " 7 ", "SAMPLE_NAME": "", "SAMPLE_ON": "yes", "SAMPLE_RATIO": "  "}
    assert dict(parse_env(_Sample, env)) == {"count": 7, "on": True}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 0}, "SAMPLE_COUNT must be positive, got 0"),
        ({"ratio": 1.5}, "SAMPLE_RATIO must be 0..1 (a share)"),
        ({"wait_s": 1.0}, "SAMPLE_WAIT_SECONDS must be at least 2.5, got 1"),
        ({"port": 101}, "SAMPLE_PORT must be at most 100 (small)"),
    ],
)
def test_bounds_messages_come_from_the_declaration(changes: dict[str, float], message: str) -> None:
    """Each kind of bound reads the same way for every setting that declares it."""
    with pytest.raises(ConfigError) as info:
        check_bounds(msgspec.structs.replace(_Sample(), **changes))
    assert str(info.value) == message
    assert info.value.variable == message.split(maxsplit=1)[0]


def test_a_type_without_a_parser_must_declare_one() -> None:
    """A setting whose type implies no parser fails loudly when first read, not silently."""

    class Odd(msgspec.Struct, frozen=True, kw_only=True):
        """A setting of a type no parser reads."""

        items: Annotated[list[int], Setting("ODD_ITEMS")] = msgspec.field(default_factory=list)

    with pytest.raises(TypeError, match="declare Setting"):
        declared(Odd)


def test_every_setting_is_read_from_its_variable() -> None:
    """Each declared variable reaches its field (one non-default value per setting)."""
    samples = {
        "HMAC_PRODUCER_ENABLED": ("true", True),
        "HMAC_PRODUCER_KEY_ID": ("k9", "k9"),
        "OUTBOUND_CA_BUNDLE": ("", None),
        "OUTBOUND_CLIENT_CERT": ("", None),
        "OUTBOUND_CLIENT_KEY": ("", None),
        "OUTBOUND_PROXY_URL": ("none", "none"),
        "OUTBOUND_SUCCESS_STATUSES": ("200-201", [200, 201]),
        "OUTBOUND_SYSTEMIC_STATUSES": ("503", [503]),
        "OUTBOUND_REJECT_STATUSES": ("418", [418]),
        "BRIDGE_STREAMS": ("a:{0},a:{1}", ["a:{0}", "a:{1}"]),
        "BRIDGE_REDIS_CLUSTER": ("false", False),
        "BRIDGE_TRIM_ACKED": ("true", True),
        "BRIDGE_ORDERING": ("parallel", "parallel"),
        "BRIDGE_LOG_FORMAT": ("text", "text"),
        "BRIDGE_LOG_LEVEL": ("DEBUG", "DEBUG"),
        "BRIDGE_START_ID": ("0", "0"),
        "BRIDGE_HEALTH_HOST": ("127.0.0.1", "127.0.0.1"),
        "BRIDGE_BACKOFF_CAP_MS": ("40000", 40000),
        "BRIDGE_LEASE_RENEW_MS": ("1000", 1000),
        "BRIDGE_INSTRUMENT_PATTERN": ("[A-Z0-9]{3,12}", "[A-Z0-9]{3,12}"),
        "OUTBOUND_SIGNATURE_SCHEME": ("rfc9421", "rfc9421"),
    }
    text = {
        "PRODUCER_ID": "desk",
        "OUTBOUND_SERVER_URL": "https://other.example.com",
        "BRIDGE_REDIS_URL": "redis://other:6379/0",
        "BRIDGE_STREAM": "s1",
        "BRIDGE_GROUP": "g1",
        "BRIDGE_CONSUMER": "c1",
        "BRIDGE_DLQ_STREAM": "d1",
    }
    # The Ed25519 key files need a key on disk and a scheme that sends it: read in
    # tests/edge/test_signers.py.
    skipped = {
        "HMAC_PRODUCER_SECRET",
        "OUTBOUND_ED25519_KEY_FILE",
        "OUTBOUND_ED25519_NEXT_KEY_FILE",
    }
    for variable, (section, item) in declared_settings().items():
        if variable in skipped:
            continue
        if variable in samples:
            raw, expected = samples[variable]
        elif variable in text:
            raw, expected = text[variable], text[variable]
        else:
            number = item.default
            assert isinstance(number, int | float), variable
            raw, expected = str(number + 1), number + 1
        config = load_config(env={**BASE_ENV, variable: raw})
        assert getattr(getattr(config, section), item.field) == expected, variable


def test_effective_settings_show_status_lists() -> None:
    """`check` lists configured status codes as written in the variable's list form."""
    config = load_config(env={**BASE_ENV, "OUTBOUND_SUCCESS_STATUSES": "200,204"})
    rows = dict(effective_settings(config))
    assert rows["OUTBOUND_SUCCESS_STATUSES"] == "200,204"
    assert rows["OUTBOUND_REJECT_STATUSES"] == "(unset)"
    assert [name for name, _ in effective_settings(config)][: len(CHECK_ORDER)] == list(CHECK_ORDER)


def test_directly_built_configs_are_not_checked_until_start() -> None:
    """Code may build partial configs (no consumer, short leases); the checks run at load."""
    config = BridgeConfig()
    assert config.stream.consumer == ""
    with pytest.raises(ConfigError, match="OUTBOUND_SERVER_URL is required"):
        config.check()


def test_the_shipped_toml_file_matches_the_declarations() -> None:
    """config/bridge.toml: each key names its declared variable, and set keys hold the default."""
    path = Path(__file__).resolve().parents[2] / "config" / "bridge.toml"
    by_field = {
        (section, item.field): (env, item) for env, (section, item) in declared_settings().items()
    }
    section = ""
    named: dict[tuple[str, str], str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        found = re.match(r"#?\s*(\w+) = .*#\s*([A-Z][A-Z0-9_]+)", line)
        if found:
            named[(section, found.group(1))] = found.group(2)
    assert named, "no settings found in config/bridge.toml"
    wrong = {key: env for key, env in named.items() if by_field[key][0] != env}
    assert not wrong, f"config/bridge.toml names the wrong variable for: {wrong}"
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    for name, values in data.items():
        for key, value in values.items():
            assert value == by_field[(name, key)][1].default, f"[{name}].{key}"
