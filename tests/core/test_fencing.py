import pytest

from bridge.core.fencing import LEASE_HEADER, LeaseStamp


def test_a_stamp_round_trips_through_its_header_value() -> None:
    """What the bridge writes in X-Signal-Lease, the server reads back exactly."""
    stamp = LeaseStamp("signals:{0}", 17)
    assert LEASE_HEADER == "X-Signal-Lease"
    assert stamp.header_value() == 'shard="signals:{0}", token=17'
    assert LeaseStamp.parse(stamp.header_value()) == stamp
    assert LeaseStamp.parse(' shard="s" ,token=1 ') == LeaseStamp("s", 1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "shard=signals, token=1",
        'shard="s", token=0',
        'shard="s", token=-1',
        'shard="s", token=1234567890123456',
        'token=1, shard="s"',
        'shard="s", token=1, extra=2',
        'shard="s\\"x", token=1',
        'shard="", token=1',
        'shard="s\u00e9", token=1',
        'shard="s", token=1\r\nX-Evil: 1',
    ],
)
def test_anything_not_exactly_in_the_format_parses_to_none(value: str) -> None:
    """A relay's or attacker's spelling never becomes a lease: None, never an exception."""
    assert LeaseStamp.parse(value) is None


@pytest.mark.parametrize(
    ("shard", "token"), [("", 1), ('a"b', 1), ("a\\b", 1), ("s", 0), ("s", 10**15)]
)
def test_a_stamp_that_could_not_be_written_unambiguously_is_refused(shard: str, token: int) -> None:
    """The bridge cannot build a header the server would read differently."""
    with pytest.raises(ValueError, match="lease"):
        LeaseStamp(shard, token)
