"""REDIS_URL parsing and key names (no server): cluster schemes, hash tags, redaction."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import ClusterDownError, MovedError, NoScriptError, ResponseError

from connectors.redis_client import is_cluster_url, is_transient, open_redis, parse_redis_url
from connectors.redis_keys import redis_key, series_tag, update_channel


@pytest.mark.parametrize(
    ("url", "plain", "cluster"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", False),
        ("rediss://u:p@h:6380/2", "rediss://u:p@h:6380/2", False),
        ("redis+cluster://h:7000", "redis://h:7000", True),
        ("REDIS+CLUSTER://h:7000", "redis://h:7000", True),
        (
            "rediss+cluster://u:p@h:7000?ssl_cert_reqs=none",
            "rediss://u:p@h:7000?ssl_cert_reqs=none",
            True,
        ),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock", False),
    ],
)
def test_cluster_schemes_map_to_what_redis_py_reads(url: str, plain: str, cluster: bool) -> None:
    target = parse_redis_url(url)
    assert (target.url, target.cluster) == (plain, cluster)
    assert is_cluster_url(url) is cluster


def test_a_parsed_url_never_shows_its_password() -> None:
    text = repr(parse_redis_url("rediss+cluster://app:s3cret@h:7000"))
    assert "s3cret" not in text and "app:***@h:7000" in text


def test_an_unreadable_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        open_redis("redis://app:s3cret@h:notaport/0")
    assert "s3cret" not in str(caught.value)


def test_every_key_of_a_series_carries_the_same_hash_tag() -> None:
    assert series_tag("binance", "BTC-USDT", "1m") == "{binance:BTC-USDT:1m}"
    assert redis_key("kline", "binance", "BTC-USDT", "1m") == "kline:{binance:BTC-USDT:1m}"
    assert redis_key("klines", "okx", "ETH-USDT", "5m") == "klines:{okx:ETH-USDT:5m}"
    assert update_channel("kline", "bybit", "XRP-USDT", "1h") == "kline-updates:{bybit:XRP-USDT:1h}"


def test_transient_errors_are_those_a_retry_can_mend() -> None:
    assert is_transient(redis.ConnectionError("reset"))
    assert is_transient(redis.TimeoutError("slow"))
    assert is_transient(ClusterDownError("CLUSTERDOWN"))
    assert is_transient(MovedError("3999 127.0.0.1:7001"))
    assert not is_transient(redis.AuthenticationError("WRONGPASS"))
    assert not is_transient(ResponseError("ERR wrong number of arguments"))
    assert not is_transient(NoScriptError("NOSCRIPT"))  # handled by reloading, not waiting


def test_replica_acks_options_are_ours_and_leave_the_url() -> None:
    target = parse_redis_url(
        "redis+cluster://u:pw@h:7000/0?ssl_cert_reqs=none&replica_acks=1&replica_ack_timeout_ms=50"
    )
    assert target.url == "redis://u:pw@h:7000/0?ssl_cert_reqs=none"
    assert (target.cluster, target.replica_acks, target.replica_ack_timeout_ms) == (True, 1, 50)
    assert parse_redis_url("redis://h:6379/0").replica_acks == 0
    assert parse_redis_url("redis://h/0?replica_acks=2").url == "redis://h/0"
    with pytest.raises(ValueError, match="replica_acks must be an integer") as caught:
        parse_redis_url("redis://u:s3cret@h/0?replica_acks=-1")
    assert "s3cret" not in str(caught.value)
