"""Loading settings: defaults and sources, required values and limits, the TOML file, redaction."""

import os
import socket
from pathlib import Path
from typing import Final

import pytest
import trustme

from bridge.config.loader import load_config
from bridge.edge.settings import OutboundConfig
from bridge.errors import ConfigError
from bridge.streams.settings import StreamConfig

SECRET_TEXT: Final = "config-test-secret-0123456789"
BASE_ENV: Final = {
    "HMAC_PRODUCER_SECRET": SECRET_TEXT,
    "OUTBOUND_SERVER_URL": "https://api.example.com",
}


def _env(**changes: str | None) -> dict[str, str]:
    """Return BASE_ENV with variables set (a string) or removed (None)."""
    env = dict(BASE_ENV)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _config_error(env: dict[str, str], path: Path | None = None) -> ConfigError:
    """Run load_config and return the ConfigError it must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return info.value


def _toml(tmp_path: Path, text: str) -> Path:
    """Write a bridge.toml in tmp_path and return its path."""
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and sources ---------------------------------------------------------------------


def test_defaults_from_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With only the secret and URL set: enabled, 30 s timeout, 64 KiB, producer = host name."""
    monkeypatch.setattr(socket, "gethostname", lambda: "trading-box-7")
    outbound = load_config(env=BASE_ENV).outbound
    assert outbound.enabled is True
    assert outbound.timeout_s == 30.0
    assert outbound.max_body_size == 65536
    assert outbound.producer_id == "trading-box-7"
    assert outbound.secret_bytes() == SECRET_TEXT.encode()
    assert outbound.key_id is None
    assert outbound.ingest_url == "https://api.example.com/api/v1/signals/ingest"


def test_environment_overrides_the_toml_file(tmp_path: Path) -> None:
    """Values come from config/bridge.toml unless the environment sets the same setting."""
    path = _toml(
        tmp_path,
        '[outbound]\nserver_url = "https://file.example.com"\nproducer_id = "from-file"\n'
        'timeout_s = 12\nkey_id = "k-file"\n\n[stream]\nstream = "file-stream"\n',
    )
    from_file = load_config(path, env={"HMAC_PRODUCER_SECRET": SECRET_TEXT})
    assert from_file.outbound.server_url == "https://file.example.com"
    assert from_file.outbound.producer_id == "from-file"
    assert from_file.outbound.timeout_s == 12.0
    assert from_file.outbound.key_id == "k-file"
    assert from_file.stream.stream == "file-stream"
    env = {
        "HMAC_PRODUCER_SECRET": SECRET_TEXT,
        "OUTBOUND_SERVER_URL": "https://env.example.com",
        "PRODUCER_ID": "from-env",
        "OUTBOUND_TIMEOUT_SECONDS": "45.5",
        "BRIDGE_STREAM": "env-stream",
    }
    overridden = load_config(path, env=env)
    assert overridden.outbound.server_url == "https://env.example.com"
    assert overridden.outbound.producer_id == "from-env"
    assert overridden.outbound.timeout_s == 45.5
    assert overridden.outbound.key_id == "k-file"
    assert overridden.stream.stream == "env-stream"


def test_blank_environment_values_do_not_override(tmp_path: Path) -> None:
    """An empty or blank variable leaves the file's value (or the default) in place."""
    path = _toml(tmp_path, '[outbound]\nproducer_id = "from-file"\n')
    env = _env(PRODUCER_ID="   ", OUTBOUND_TIMEOUT_SECONDS="")
    outbound = load_config(path, env=env).outbound
    assert outbound.producer_id == "from-file"
    assert outbound.timeout_s == 30.0


def test_bridge_config_variable_names_the_file(tmp_path: Path) -> None:
    """BRIDGE_CONFIG points load_config at the TOML file when no path is given."""
    path = _toml(tmp_path, '[outbound]\nproducer_id = "via-bridge-config"\n')
    assert (
        load_config(env=_env(BRIDGE_CONFIG=str(path))).outbound.producer_id == "via-bridge-config"
    )


def test_missing_config_file_names_bridge_config(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError naming BRIDGE_CONFIG."""
    error = _config_error(_env(BRIDGE_CONFIG=str(tmp_path / "absent.toml")))
    assert error.variable == "BRIDGE_CONFIG"
    assert "absent.toml" in str(error)


def test_producer_id_and_timeout_from_environment() -> None:
    """PRODUCER_ID and OUTBOUND_TIMEOUT_SECONDS are read from the environment."""
    outbound = load_config(env=_env(PRODUCER_ID="mt5-gold", OUTBOUND_TIMEOUT_SECONDS="5")).outbound
    assert (outbound.producer_id, outbound.timeout_s) == ("mt5-gold", 5.0)


def test_ingest_url_keeps_a_base_path() -> None:
    """A server URL with a path prefix and trailing slash gives the prefixed ingest path."""
    outbound = load_config(env=_env(OUTBOUND_SERVER_URL="https://gw.example.com/base/")).outbound
    assert outbound.ingest_url == "https://gw.example.com/base/api/v1/signals/ingest"
    assert outbound.ingest_path == "/base/api/v1/signals/ingest"


def test_default_consumer_is_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without BRIDGE_CONSUMER the consumer name is <hostname>-<pid>."""
    monkeypatch.setattr(socket, "gethostname", lambda: "replica-3")
    assert load_config(env=BASE_ENV).stream.consumer == f"replica-3-{os.getpid()}"


# --- required values and limits ---------------------------------------------------------------


def test_missing_server_url_names_the_variable() -> None:
    """Without OUTBOUND_SERVER_URL the error names OUTBOUND_SERVER_URL."""
    error = _config_error(_env(OUTBOUND_SERVER_URL=None))
    assert error.variable == "OUTBOUND_SERVER_URL"
    assert "OUTBOUND_SERVER_URL is required" in str(error)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("secret", [None, ""], ids=["absent", "empty"])
def test_missing_secret_names_the_variable(secret: str | None) -> None:
    """When enabled, a missing or empty HMAC_PRODUCER_SECRET is an error naming it."""
    error = _config_error(_env(HMAC_PRODUCER_SECRET=secret))
    assert error.variable == "HMAC_PRODUCER_SECRET"
    assert "HMAC_PRODUCER_SECRET" in str(error)


@pytest.mark.parametrize("value", ["false", "0", "no", "OFF", " False "])
def test_disabled_producer_needs_no_secret(value: str) -> None:
    """HMAC_PRODUCER_ENABLED=false turns the outbound checks off; no secret is required."""
    outbound = load_config(env={"HMAC_PRODUCER_ENABLED": value}).outbound
    assert outbound.enabled is False
    assert outbound.secret is None
    with pytest.raises(ConfigError, match="HMAC_PRODUCER_SECRET"):
        outbound.secret_bytes()


@pytest.mark.parametrize("value", ["true", "1", "yes", "on", "TRUE"])
def test_enabled_values_are_accepted(value: str) -> None:
    """The usual spellings of true enable the producer."""
    assert load_config(env=_env(HMAC_PRODUCER_ENABLED=value)).outbound.enabled is True


def test_bad_enabled_value_names_the_variable() -> None:
    """A value that is neither true nor false is an error naming HMAC_PRODUCER_ENABLED."""
    error = _config_error(_env(HMAC_PRODUCER_ENABLED="maybe"))
    assert error.variable == "HMAC_PRODUCER_ENABLED"
    assert "maybe" in str(error)


def test_secret_shorter_than_16_bytes_is_rejected() -> None:
    """A 15-byte secret is an error naming the variable; 16 bytes (even 8 x 2-byte chars) pass."""
    error = _config_error(_env(HMAC_PRODUCER_SECRET="s" * 15))
    assert error.variable == "HMAC_PRODUCER_SECRET"
    assert "16 bytes" in str(error)
    assert "s" * 15 not in str(error)
    assert load_config(env=_env(HMAC_PRODUCER_SECRET="s" * 16)).outbound.secret is not None
    two_byte = "\N{LATIN SMALL LETTER E WITH ACUTE}" * 8
    assert load_config(env=_env(HMAC_PRODUCER_SECRET=two_byte)).outbound.secret_bytes() == (
        two_byte.encode()
    )


def test_secret_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    """HMAC_PRODUCER_SECRET_FILE supplies the secret; the trailing newline is not part of it."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"file-secret-0123456789\n")
    env = _env(HMAC_PRODUCER_SECRET=None, HMAC_PRODUCER_SECRET_FILE=str(secret_file))
    assert load_config(env=env).outbound.secret_bytes() == b"file-secret-0123456789"


def test_secret_variable_wins_over_secret_file(tmp_path: Path) -> None:
    """When both are set, HMAC_PRODUCER_SECRET is used and the file is ignored."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"file-secret-0123456789")
    env = _env(HMAC_PRODUCER_SECRET_FILE=str(secret_file))
    assert load_config(env=env).outbound.secret_bytes() == SECRET_TEXT.encode()


def test_unreadable_secret_file_names_the_variable(tmp_path: Path) -> None:
    """A secret file that cannot be read is an error naming HMAC_PRODUCER_SECRET_FILE."""
    env = _env(HMAC_PRODUCER_SECRET=None, HMAC_PRODUCER_SECRET_FILE=str(tmp_path / "nope"))
    error = _config_error(env)
    assert error.variable == "HMAC_PRODUCER_SECRET_FILE"
    assert "nope" in str(error)


def test_short_secret_from_file_is_rejected(tmp_path: Path) -> None:
    """The 16-byte minimum applies to a secret read from a file too."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"short\n")
    env = _env(HMAC_PRODUCER_SECRET=None, HMAC_PRODUCER_SECRET_FILE=str(secret_file))
    assert _config_error(env).variable == "HMAC_PRODUCER_SECRET"


@pytest.mark.parametrize("timeout", ["4.99", "0", "-30"])
def test_timeout_below_5_seconds_names_the_variable(timeout: str) -> None:
    """OUTBOUND_TIMEOUT_SECONDS under 5 is an error naming the variable and the value."""
    error = _config_error(_env(OUTBOUND_TIMEOUT_SECONDS=timeout))
    assert error.variable == "OUTBOUND_TIMEOUT_SECONDS"
    assert "at least 5" in str(error)


def test_timeout_must_be_a_number() -> None:
    """A non-numeric timeout is an error naming OUTBOUND_TIMEOUT_SECONDS."""
    error = _config_error(_env(OUTBOUND_TIMEOUT_SECONDS="thirty"))
    assert error.variable == "OUTBOUND_TIMEOUT_SECONDS"
    assert "number" in str(error)


def test_nan_timeout_is_rejected() -> None:
    """OUTBOUND_TIMEOUT_SECONDS=nan is not a usable timeout and must be refused."""
    assert _config_error(_env(OUTBOUND_TIMEOUT_SECONDS="nan")).variable == (
        "OUTBOUND_TIMEOUT_SECONDS"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com",
        "https://api.example.com:8443/prefix",
        "http://127.0.0.1:8080",
        "http://127.5.6.7",
        "http://localhost:9000",
        "http://[::1]:9000",
    ],
)
def test_accepted_server_urls(url: str) -> None:
    """HTTPS anywhere, and plain http only for loopback hosts, are accepted."""
    assert load_config(env=_env(OUTBOUND_SERVER_URL=url)).outbound.server_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://api.example.com", "must use https"),
        ("http://10.0.0.5:8080", "must use https"),
        ("http://localhost.evil.com", "must use https"),
        ("ftp://api.example.com", "http(s) URL with a host"),
        ("api.example.com", "http(s) URL with a host"),
        ("https://", "http(s) URL with a host"),
        ("https://user:hunter2-password@api.example.com", "must not carry credentials"),
    ],
)
def test_rejected_server_urls_name_the_variable(url: str, message: str) -> None:
    """Non-https, non-loopback http, hostless and credentialed URLs name OUTBOUND_SERVER_URL."""
    error = _config_error(_env(OUTBOUND_SERVER_URL=url))
    assert error.variable == "OUTBOUND_SERVER_URL"
    assert message in str(error)
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"OUTBOUND_MAX_BODY_SIZE": "0"}, "OUTBOUND_MAX_BODY_SIZE"),
        ({"OUTBOUND_MAX_BODY_SIZE": "big"}, "OUTBOUND_MAX_BODY_SIZE"),
        ({"OUTBOUND_MAX_CONNECTIONS": "0"}, "OUTBOUND_MAX_CONNECTIONS"),
        ({"PRODUCER_ID": "two\nlines"}, "PRODUCER_ID"),
        ({"OUTBOUND_CA_BUNDLE": "/nonexistent/ca.pem"}, "OUTBOUND_CA_BUNDLE"),
        ({"OUTBOUND_CLIENT_CERT": "/nonexistent/cert.pem"}, "OUTBOUND_CLIENT_CERT"),
        ({"OUTBOUND_CLIENT_KEY": "/nonexistent/key.pem"}, "OUTBOUND_CLIENT_CERT"),
    ],
)
def test_other_outbound_settings_name_the_variable(changes: dict[str, str], variable: str) -> None:
    """Body size, connections, producer id and TLS file settings are checked by variable name."""
    error = _config_error(_env(**changes))
    assert error.variable == variable
    assert variable in str(error)


def test_tls_files_that_exist_are_accepted(tmp_path: Path) -> None:
    """A PEM CA bundle and a matching PEM client certificate and key pass validation."""
    ca = trustme.CA()
    leaf = ca.issue_cert("bridge.example")
    files = {name: tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert.pem"]))
    leaf.private_key_pem.write_to_path(str(files["key.pem"]))
    env = _env(
        OUTBOUND_CA_BUNDLE=str(files["ca.pem"]),
        OUTBOUND_CLIENT_CERT=str(files["cert.pem"]),
        OUTBOUND_CLIENT_KEY=str(files["key.pem"]),
    )
    outbound = load_config(env=env).outbound
    assert outbound.ca_bundle == str(files["ca.pem"])
    assert outbound.client_key == str(files["key.pem"])


# --- the TOML file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[outbound]\nsecret = "in-the-file-0123456789"\n', "not in the file"),
        ('[outbound]\nsecrets = "x"\n', "unknown key 'secrets' in [outbound]"),
        ("[bogus]\nx = 1\n", "unknown section [bogus]"),
        ('outbound = "flat"\n', "unknown section [outbound]"),
        ("[outbound\n", "not valid TOML"),
    ],
    ids=["secret-in-file", "unknown-key", "unknown-section", "not-a-table", "bad-toml"],
)
def test_bad_toml_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    """A secret in the file, unknown sections/keys and broken TOML are ConfigErrors."""
    error = _config_error(BASE_ENV, _toml(tmp_path, text))
    assert message in str(error)
    assert "in-the-file-0123456789" not in str(error)


@pytest.mark.parametrize(
    ("text", "variable"),
    [
        ('[outbound]\ntimeout_s = "slow"\n', "OUTBOUND_TIMEOUT_SECONDS"),
        ('[outbound]\nenabled = "yes"\n', "HMAC_PRODUCER_ENABLED"),
        ('[telemetry]\nlog_format = "xml"\n', "BRIDGE_LOG_FORMAT"),
        ("[stream]\nbatch_size = 1.5\n", "BRIDGE_BATCH_SIZE"),
    ],
)
def test_wrong_types_in_the_file_name_the_variable(
    tmp_path: Path, text: str, variable: str
) -> None:
    """A value of the wrong type in the file is reported under its environment variable name."""
    assert variable in str(_config_error(BASE_ENV, _toml(tmp_path, text)))


# --- stream and telemetry sections ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"BRIDGE_REDIS_URL": "http://redis:6379"}, "BRIDGE_REDIS_URL"),
        ({"BRIDGE_DLQ_STREAM": "signals"}, "BRIDGE_DLQ_STREAM"),
        ({"BRIDGE_START_ID": "latest"}, "BRIDGE_START_ID"),
        ({"BRIDGE_START_ID": "12-ab"}, "BRIDGE_START_ID"),
        ({"BRIDGE_MAX_IN_FLIGHT": "0"}, "BRIDGE_MAX_IN_FLIGHT"),
        ({"BRIDGE_MAX_IN_FLIGHT": "many"}, "BRIDGE_MAX_IN_FLIGHT"),
        ({"BRIDGE_CLAIM_IDLE_MS": "-1"}, "BRIDGE_CLAIM_IDLE_MS"),
        ({"BRIDGE_MAX_DELIVERIES": "0"}, "BRIDGE_MAX_DELIVERIES"),
        ({"BRIDGE_BATCH_SIZE": "0"}, "BRIDGE_BATCH_SIZE"),
        ({"BRIDGE_BLOCK_MS": "0"}, "BRIDGE_BLOCK_MS"),
        ({"BRIDGE_SIGNAL_MAX_AGE_SECONDS": "-1"}, "BRIDGE_SIGNAL_MAX_AGE_SECONDS"),
        ({"BRIDGE_SHUTDOWN_GRACE_SECONDS": "-0.5"}, "BRIDGE_SHUTDOWN_GRACE_SECONDS"),
        ({"BRIDGE_LOG_LEVEL": "LOUD"}, "BRIDGE_LOG_LEVEL"),
        ({"BRIDGE_HEALTH_PORT": "70000"}, "BRIDGE_HEALTH_PORT"),
        ({"BRIDGE_LANE_STALL_WARN_SECONDS": "0"}, "BRIDGE_LANE_STALL_WARN_SECONDS"),
        ({"BRIDGE_LANE_STALL_WARN_SECONDS": "soon"}, "BRIDGE_LANE_STALL_WARN_SECONDS"),
    ],
)
def test_stream_and_telemetry_settings_name_the_variable(
    changes: dict[str, str], variable: str
) -> None:
    """Invalid stream and telemetry settings are ConfigErrors naming their variable."""
    error = _config_error(_env(**changes))
    assert error.variable == variable
    assert variable in str(error)


@pytest.mark.parametrize("name", ["stream", "group", "dlq_stream"])
def test_empty_stream_names_are_refused(tmp_path: Path, name: str) -> None:
    """Empty stream, group or dead-letter stream names (from the file) name their variable."""
    error = _config_error(BASE_ENV, _toml(tmp_path, f'[stream]\n{name} = ""\n'))
    assert error.variable == f"BRIDGE_{name.upper()}"


def test_missing_consumer_defaults_but_an_empty_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No consumer name: <hostname>-<pid>; an empty one in the file is refused, not replaced."""
    monkeypatch.setattr(socket, "gethostname", lambda: "replica-4")
    assert load_config(env=BASE_ENV).stream.consumer == f"replica-4-{os.getpid()}"
    error = _config_error(BASE_ENV, _toml(tmp_path, '[stream]\nconsumer = ""\n'))
    assert error.variable == "BRIDGE_CONSUMER"


def test_valid_stream_settings_are_loaded() -> None:
    """Stream ids, rediss URLs and zero-disables values are accepted as given."""
    env = _env(
        BRIDGE_REDIS_URL="rediss://cache.example.com:6380/2",
        BRIDGE_START_ID="1700000000000-5",
        BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
        BRIDGE_HEALTH_PORT="0",
        BRIDGE_LOG_LEVEL="debug",
        BRIDGE_CONSUMER="worker-1",
    )
    config = load_config(env=env)
    assert config.stream.start_id == "1700000000000-5"
    assert config.stream.consumer == "worker-1"
    assert config.stream.signal_max_age_s == 0.0
    assert config.telemetry.health_port == 0


# --- secrets never show -----------------------------------------------------------------------


def test_secret_never_appears_in_repr_or_str() -> None:
    """Secret, OutboundConfig and BridgeConfig reprs and strs hide the secret value."""
    config = load_config(env=BASE_ENV)
    secret = config.outbound.secret
    assert secret is not None
    for text in (repr(secret), str(secret), repr(config.outbound), str(config), repr(config)):
        assert SECRET_TEXT not in text
    assert repr(secret) == "Secret('**********')"
    assert "Secret('**********')" in repr(config.outbound)


def test_outbound_config_without_secret_refuses_secret_bytes() -> None:
    """secret_bytes() on a config that has no secret is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="HMAC_PRODUCER_SECRET") as info:
        OutboundConfig(server_url="https://api.example.com").secret_bytes()
    assert info.value.variable == "HMAC_PRODUCER_SECRET"


def test_stream_config_repr_redacts_the_redis_password() -> None:
    """StreamConfig's repr shows the Redis URL without its password."""
    text = repr(StreamConfig(redis_url="redis://:s3cr3t-pw@redis:6379/0"))
    assert "s3cr3t-pw" not in text
    assert "redis://:***@redis:6379/0" in text
    assert text.startswith("StreamConfig(")


def test_invalid_redis_url_error_redacts_the_password() -> None:
    """The error for a bad Redis URL names the variable but not the password in it."""
    error = _config_error(_env(BRIDGE_REDIS_URL="http://:pw-in-url@redis"))
    assert "pw-in-url" not in str(error)


# --- operator commands and telemetry extras --------------------------------------------------


def test_operator_commands_need_no_delivery_settings() -> None:
    """load_config(delivery=False) needs neither the secret nor the server URL."""
    config = load_config(env={"HMAC_PRODUCER_ENABLED": "true"}, delivery=False)
    assert config.outbound.enabled is False
    with pytest.raises(ConfigError, match="OUTBOUND_SERVER_URL"):
        load_config(env={"HMAC_PRODUCER_SECRET": SECRET_TEXT})


def test_status_interval_must_be_positive() -> None:
    """BRIDGE_STATUS_INTERVAL_SECONDS is read, and zero is an error naming it."""
    assert load_config(
        env=_env(BRIDGE_STATUS_INTERVAL_SECONDS="2.5")
    ).telemetry.status_interval_s == (2.5)
    assert _config_error(_env(BRIDGE_STATUS_INTERVAL_SECONDS="0")).variable == (
        "BRIDGE_STATUS_INTERVAL_SECONDS"
    )


def test_otel_variables_are_kept_but_their_values_never_shown() -> None:
    """OTEL_* variables are copied for the SDK set-up; the config repr shows only their names."""
    env = _env(OTEL_EXPORTER_OTLP_HEADERS="api-key=otel-api-key-value", OTEL_SERVICE_NAME="b")
    config = load_config(env=env)
    assert config.telemetry.otel_env == {
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=otel-api-key-value",
        "OTEL_SERVICE_NAME": "b",
    }
    for text in (repr(config), repr(config.telemetry), str(config)):
        assert "otel-api-key-value" not in text
        assert "OTEL_EXPORTER_OTLP_HEADERS" in text


def test_several_streams_each_get_their_own_dead_letter_stream() -> None:
    """BRIDGE_STREAMS lists the streams to consume; each then dead-letters to <stream>:dlq."""
    single = load_config(env=BASE_ENV).stream
    assert single.stream_names() == ["signals"]
    assert single.dlq_for("signals") == "signals:dlq"
    several = load_config(env=_env(BRIDGE_STREAMS=" {gold}:signals, {fx}:signals ,")).stream
    assert several.stream_names() == ["{gold}:signals", "{fx}:signals"]
    assert several.dlq_for("{fx}:signals") == "{fx}:signals:dlq"


@pytest.mark.parametrize("streams", ["a,b,a", "a,b:dlq"], ids=["repeated", "dead-letter"])
def test_bad_stream_lists_name_the_variable(streams: str) -> None:
    """A repeated stream or a dead-letter stream in BRIDGE_STREAMS is refused."""
    assert _config_error(_env(BRIDGE_STREAMS=streams)).variable == "BRIDGE_STREAMS"


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"PRODUCER_ID": "trader-é"}, "PRODUCER_ID"),
        ({"HMAC_PRODUCER_KEY_ID": "key\tid"}, "HMAC_PRODUCER_KEY_ID"),
        ({"BRIDGE_BLOCK_MS": "60000"}, "BRIDGE_BLOCK_MS"),
        ({"BRIDGE_REDIS_CLUSTER": "true"}, "BRIDGE_DLQ_STREAM"),
    ],
)
def test_settings_that_would_fail_later_are_refused_at_start(
    changes: dict[str, str], variable: str
) -> None:
    """Header-unsafe ids, a BLOCK above the Redis timeout, cross-slot DLQs fail at load."""
    with pytest.raises(ConfigError) as caught:
        load_config(env=_env(**changes))
    assert caught.value.variable == variable


def test_sharded_streams_keep_their_dead_letters_in_their_slot() -> None:
    """With BRIDGE_STREAMS under a cluster, each <stream>:dlq shares its stream's hash tag."""
    config = load_config(
        env=_env(BRIDGE_REDIS_CLUSTER="true", BRIDGE_STREAMS="signals:{0},signals:{1}")
    )
    assert config.stream.dlq_for("signals:{1}") == "signals:{1}:dlq"


def test_the_lane_stall_warning_threshold_defaults_to_ten_seconds_and_can_be_set() -> None:
    """BRIDGE_LANE_STALL_WARN_SECONDS: 10 s unless set."""
    assert load_config(env=_env()).stream.lane_stall_warn_s == 10.0
    config = load_config(env=_env(BRIDGE_LANE_STALL_WARN_SECONDS="2.5"))
    assert config.stream.lane_stall_warn_s == 2.5


# --- limits, timeouts and proxies of the HTTP edge ---------------------------------------------


def test_edge_defaults_and_overrides() -> None:
    """Response limits and timeouts default safely and come from their variables."""
    default = load_config(env=_env()).outbound
    assert (default.max_response_bytes, default.max_response_head_bytes) == (1048576, 65536)
    assert (default.max_response_headers, default.connect_timeout_s) == (100, 10.0)
    assert default.tcp_user_timeout_s == 10.0
    custom = load_config(
        env=_env(
            OUTBOUND_MAX_RESPONSE_BYTES="2048",
            OUTBOUND_MAX_RESPONSE_HEAD_BYTES="4096",
            OUTBOUND_MAX_RESPONSE_HEADERS="20",
            OUTBOUND_CONNECT_TIMEOUT_SECONDS="2.5",
            OUTBOUND_TCP_USER_TIMEOUT_SECONDS="0",
        )
    ).outbound
    assert (custom.max_response_bytes, custom.max_response_head_bytes) == (2048, 4096)
    assert (custom.max_response_headers, custom.connect_timeout_s) == (20, 2.5)
    assert custom.tcp_user_timeout_s == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OUTBOUND_MAX_RESPONSE_BYTES", "0"),
        ("OUTBOUND_MAX_RESPONSE_HEAD_BYTES", "-1"),
        ("OUTBOUND_MAX_RESPONSE_HEADERS", "0"),
        ("OUTBOUND_CONNECT_TIMEOUT_SECONDS", "0"),
        ("OUTBOUND_TCP_USER_TIMEOUT_SECONDS", "-1"),
        ("OUTBOUND_PROXY_URL", "socks5://127.0.0.1:1080"),
        ("HTTPS_PROXY", "https://proxy:3128"),
        ("OUTBOUND_PROXY_URL", "http://proxy:99999"),
    ],
)
def test_bad_edge_settings_name_the_variable(variable: str, value: str) -> None:
    """A bad limit, timeout or proxy stops the start naming the variable it came from."""
    error = _config_error(_env(**{variable: value}))
    assert error.variable == variable


def test_proxy_credentials_never_show_in_the_config_repr() -> None:
    """The proxy URL's password is redacted in repr, from the setting and the environment."""
    config = load_config(
        env=_env(
            OUTBOUND_PROXY_URL="http://user:hunter22@proxy:3128",
            HTTPS_PROXY="http://env:pa55word@proxy:3128",
        )
    ).outbound
    assert config.proxy() == ("http://user:hunter22@proxy:3128", "OUTBOUND_PROXY_URL")
    text = repr(config)
    assert "hunter22" not in text
    assert "pa55word" not in text
    assert SECRET_TEXT not in text
    assert "user:***@proxy:3128" in text
