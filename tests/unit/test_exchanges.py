"""Exchange adapters: real payloads in, DESIGN.md records out; control frames; REST pages."""

from __future__ import annotations

import orjson
import pytest

from connectors.exchanges import BinanceSpot, Bybit, Okx, create_adapter
from connectors.exchanges.base import FrameKind, RestError, RestRateLimited
from connectors.symbols import UnknownSymbol

INGEST = 1_717_171_260_100

BINANCE_PUSH = (
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1717171260012,"s":"BTCUSDT",'
    '"k":{"t":1717171200000,"T":1717171259999,"s":"BTCUSDT","i":"1m","f":3621834971,'
    '"L":3621836270,"o":"67512.01000000","c":"67530.00000000","h":"67544.00000000",'
    '"l":"67508.00000000","v":"18.86934000","n":1300,"x":true,"q":"1274220.82587470",'
    '"V":"10.08735000","Q":"681240.26637080","B":"0"}}}'
)
OKX_PUSH = (
    '{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1717171200000","67512.1",'
    '"67544","67508","67530","18.86934","1274220.82587470","1274220.82587470","0"]]}'
)
BYBIT_PUSH = (
    '{"topic":"kline.1.BTCUSDT","type":"snapshot","ts":1717171260012,"data":[{"start":'
    '1717171200000,"end":1717171259999,"interval":"1","open":"67512.01","close":"67530",'
    '"high":"67544","low":"67508","volume":"18.869342","turnover":"1274220.8258747",'
    '"confirm":true,"timestamp":1717171260012}]}'
)


def test_binance_combined_push_becomes_the_contract_record() -> None:
    adapter = BinanceSpot("spot", ["BTCUSDT"])
    parsed = adapter.parse_frame(BINANCE_PUSH, INGEST)
    assert parsed.kind is FrameKind.KLINES and not parsed.rejected
    (kline,) = parsed.klines
    assert kline.to_dict() == {
        "exchange": "binance",
        "symbol": "BTC-USDT",
        "raw_symbol": "BTCUSDT",
        "timeframe": "1m",
        "open_time": 1717171200000,
        "close_time": 1717171259999,
        "open": 67512.01,
        "high": 67544.0,
        "low": 67508.0,
        "close": 67530.0,
        "volume": 18.86934,
        "quote_volume": 1274220.8258747,
        "trades": 1300,
        "taker_buy_volume": 10.08735,
        "taker_buy_quote_volume": 681240.2663708,
        "is_closed": True,
        "event_time": 1717171260012,
        "ingest_time": INGEST,
        "market": "spot",
        "base_multiplier": 1,
        "provenance": "ws",
    }
    assert kline.series_key == "binance:BTC-USDT:1m"


def test_binance_url_names_every_stream_and_takes_base_or_full_urls() -> None:
    adapter = BinanceSpot("spot", ["BTCUSDT", "ETHFDUSD"])
    infos = list(adapter.symbols.values())
    expected = "wss://x:9443/stream?streams=btcusdt@kline_1m/ethfdusd@kline_1m"
    assert adapter.ws_url("wss://x:9443", infos) == expected
    assert adapter.ws_url("wss://x:9443/stream", infos) == expected
    assert adapter.subscribe_messages(infos) == []
    assert adapter.symbols["ETHFDUSD"].symbol == "ETH-FDUSD"


@pytest.mark.parametrize(
    "frame",
    [
        '{"e":"serverShutdown","E":1717171260000}',
        '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1717171260000}}',
    ],
)
def test_binance_server_shutdown_is_recognised_bare_or_wrapped(frame: str) -> None:
    assert BinanceSpot("spot", ["BTCUSDT"]).parse_frame(frame, INGEST).kind is FrameKind.SHUTDOWN


def test_binance_control_and_garbage_frames() -> None:
    adapter = BinanceSpot("spot", ["BTCUSDT"])
    assert adapter.parse_frame('{"result":null,"id":1}', INGEST).kind is FrameKind.ACK
    error = adapter.parse_frame('{"error":{"code":2,"msg":"Invalid request"},"id":1}', INGEST)
    assert error.kind is FrameKind.ERROR and "Invalid request" in error.detail
    for garbage in ("{not json", "[1]", '{"stream":"x","data":{"e":"trade"}}', "null"):
        assert adapter.parse_frame(garbage, INGEST).kind is FrameKind.MALFORMED
    unsubscribed = BINANCE_PUSH.replace("BTCUSDT", "XRPUSDT")
    assert adapter.parse_frame(unsubscribed, INGEST).kind is FrameKind.MALFORMED


def test_binance_invalid_bar_is_rejected_with_reason_and_key() -> None:
    adapter = BinanceSpot("spot", ["BTCUSDT"])
    parsed = adapter.parse_frame(BINANCE_PUSH.replace('"h":"67544.00000000"', '"h":"1"'), INGEST)
    assert parsed.kind is FrameKind.KLINES and not parsed.klines
    (rejected,) = parsed.rejected
    assert rejected.reason.startswith("high:")
    assert rejected.key == "binance:BTC-USDT:1m"
    assert orjson.loads(rejected.original)["k"]["h"] == "1"
    interval = adapter.parse_frame(BINANCE_PUSH.replace('"i":"1m"', '"i":"5m"'), INGEST)
    assert interval.rejected[0].reason.startswith("interval")


def test_okx_spot_push_volumes_and_nulls() -> None:
    adapter = Okx("spot", ["BTC-USDT"])
    (kline,) = adapter.parse_frame(OKX_PUSH, INGEST).klines
    assert kline.symbol == "BTC-USDT" and kline.raw_symbol == "BTC-USDT"
    assert kline.volume == 18.86934 and kline.quote_volume == 1274220.8258747
    assert kline.trades is None and kline.taker_buy_volume is None
    assert kline.taker_buy_quote_volume is None
    assert kline.is_closed is False
    assert kline.event_time == INGEST  # OKX pushes carry no event time
    assert kline.close_time == kline.open_time + 59_999


def test_okx_swap_volume_is_the_base_currency_field() -> None:
    adapter = Okx("linear", ["BTC-USDT-SWAP"])
    frame = orjson.dumps(
        {
            "arg": {"channel": "candle1m", "instId": "BTC-USDT-SWAP"},
            "data": [["1717171200000", "1", "2", "0.5", "1.5", "1886.934", "18.86934", "28", "1"]],
        }
    ).decode()
    (kline,) = adapter.parse_frame(frame, INGEST).klines
    assert kline.volume == pytest.approx(18.86934)  # 1886.934 contracts x ctVal 0.01 BTC
    assert kline.quote_volume == 28.0 and kline.is_closed is True
    assert kline.symbol == "BTC-USDT-PERP" and kline.raw_symbol == "BTC-USDT-SWAP"
    assert kline.market == "perp" and kline.provenance == "ws"


def test_okx_control_frames() -> None:
    adapter = Okx("spot", ["BTC-USDT"])
    assert adapter.parse_frame("pong", INGEST).kind is FrameKind.PONG
    assert adapter.ping_message() == "ping"
    ack = '{"event":"subscribe","arg":{"channel":"candle1m","instId":"BTC-USDT"},"connId":"a"}'
    assert adapter.parse_frame(ack, INGEST).kind is FrameKind.ACK
    notice = '{"event":"notice","code":"64008","msg":"The connection will soon be closed"}'
    assert adapter.parse_frame(notice, INGEST).kind is FrameKind.SHUTDOWN
    error = '{"event":"error","code":"60018","msg":"Wrong URL or channel"}'
    assert adapter.parse_frame(error, INGEST).kind is FrameKind.ERROR
    bad_confirm = OKX_PUSH.replace('"0"]]', '"2"]]')
    assert adapter.parse_frame(bad_confirm, INGEST).rejected[0].reason.startswith("confirm")
    short_row = '{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1717171200000"]]}'
    assert adapter.parse_frame(short_row, INGEST).rejected


def test_okx_subscribe_batches_and_business_path() -> None:
    symbols = [f"C{number}-USDT" for number in range(45)]
    adapter = Okx("spot", symbols)
    messages = [
        orjson.loads(text) for text in adapter.subscribe_messages(list(adapter.symbols.values()))
    ]
    assert [len(message["args"]) for message in messages] == [20, 20, 5]
    assert messages[0]["args"][0] == {"channel": "candle1m", "instId": "C0-USDT"}
    assert adapter.ws_endpoint("wss://ws.okx.com:8443") == "wss://ws.okx.com:8443/ws/v5/business"
    assert adapter.ws_endpoint("ws://h:1/custom") == "ws://h:1/custom"


def test_bybit_push_uses_turnover_as_quote_and_ts_as_event_time() -> None:
    adapter = Bybit("spot", ["BTCUSDT"])
    (kline,) = adapter.parse_frame(BYBIT_PUSH, INGEST).klines
    assert kline.volume == 18.869342 and kline.quote_volume == 1274220.8258747
    assert kline.trades is None and kline.is_closed is True
    assert kline.event_time == 1717171260012
    assert kline.close_time == 1717171259999


def test_bybit_control_frames_of_both_markets() -> None:
    spot = Bybit("spot", ["BTCUSDT"])
    linear = Bybit("linear", ["BTCUSDT"])
    spot_pong = '{"success":true,"ret_msg":"pong","conn_id":"x","req_id":"ping","op":"ping"}'
    linear_pong = '{"req_id":"ping","op":"pong","args":["1717171260012"],"conn_id":"x"}'
    assert spot.parse_frame(spot_pong, INGEST).kind is FrameKind.PONG
    assert linear.parse_frame(linear_pong, INGEST).kind is FrameKind.PONG
    ok = '{"success":true,"ret_msg":"","conn_id":"x","req_id":"sub-0","op":"subscribe"}'
    assert spot.parse_frame(ok, INGEST).kind is FrameKind.ACK
    failed = '{"success":false,"ret_msg":"args size >10","op":"subscribe"}'
    assert spot.parse_frame(failed, INGEST).kind is FrameKind.ERROR
    assert spot.parse_frame('{"topic":"orderbook.1.BTCUSDT","data":{}}', INGEST).kind is (
        FrameKind.MALFORMED
    )
    assert orjson.loads(spot.ping_message() or "")["op"] == "ping"
    assert spot.ws_endpoint("wss://stream.bybit.com") == "wss://stream.bybit.com/v5/public/spot"
    assert linear.ws_endpoint("wss://stream.bybit.com").endswith("/v5/public/linear")


def test_bybit_subscribes_ten_topics_per_request() -> None:
    adapter = Bybit("spot", [f"C{number}USDT" for number in range(25)])
    messages = [
        orjson.loads(text) for text in adapter.subscribe_messages(list(adapter.symbols.values()))
    ]
    assert [len(message["args"]) for message in messages] == [10, 10, 5]
    assert messages[0]["args"][0] == "kline.1.C0USDT"


def test_symbols_that_cannot_be_split_are_refused_at_start() -> None:
    with pytest.raises(UnknownSymbol, match="no known quote asset"):
        create_adapter("binance", "spot", ["BTCUSDT", "FOOBAR"])
    with pytest.raises(UnknownSymbol, match="linear instrument"):
        create_adapter("okx", "spot", ["BTC-USDT-SWAP"])
    with pytest.raises(UnknownSymbol, match="inverse"):
        create_adapter("okx", "linear", ["BTC-USD-SWAP"])
    with pytest.raises(UnknownSymbol, match="not supported"):
        create_adapter("binance", "margin", ["BTCUSDT"])
    with pytest.raises(UnknownSymbol, match="unknown exchange"):
        create_adapter("kraken", "spot", ["BTCUSDT"])
    with pytest.raises(UnknownSymbol, match="twice"):
        create_adapter("bybit", "spot", ["BTCUSDT", "btcusdt"])


def test_binance_rest_rows_in_range_are_closed_bars_with_deterministic_event_time() -> None:
    adapter = BinanceSpot("spot", ["BTCUSDT"])
    info = adapter.symbols["BTCUSDT"]
    start = 1717171200000
    rows = [
        [start + n * 60_000, "1", "2", "0.5", "1.5", "10", start + n * 60_000 + 59_999,
         "15", 7, "4", "6", "0"]
        for n in range(3)
    ]  # fmt: skip
    later = INGEST + 120_000  # both minutes have ended
    page = adapter.parse_rest(info, rows, start, start + 2 * 60_000, later)
    assert [kline.open_time for kline in page.klines] == [start, start + 60_000]
    assert all(kline.is_closed and kline.provenance == "rest" for kline in page.klines)
    # At INGEST the second minute is still open: Binance returns it, it is not stored closed.
    open_page = adapter.parse_rest(info, rows, start, start + 2 * 60_000, INGEST)
    assert [kline.open_time for kline in open_page.klines] == [start]
    assert open_page.unconfirmed == [start + 60_000]
    assert page.klines[0].event_time == start + 60_000
    assert page.klines[0].trades == 7 and page.klines[0].taker_buy_volume == 4.0
    assert page.next_start_ms is None
    request = adapter.rest_request(info, start, start + 120_000)
    assert request.path == "/api/v3/klines"
    assert request.params["endTime"] == str(start + 119_999)
    with pytest.raises(RestError):
        adapter.parse_rest(info, {"code": -1121, "msg": "Invalid symbol."}, start, start, INGEST)


def test_okx_rest_is_newest_first_pages_backwards_and_keeps_unconfirmed() -> None:
    adapter = Okx("spot", ["BTC-USDT"])
    adapter_limit = adapter.rest_page_limit
    info = adapter.symbols["BTC-USDT"]
    start = 1717171200000
    rows = [
        [str(start + n * 60_000), "1", "2", "0.5", "1.5", "10", "15", "15", "1" if n < 3 else "0"]
        for n in range(4)
    ][::-1]
    page = adapter.parse_rest(
        info, {"code": "0", "msg": "", "data": rows}, start, start + 4 * 60_000, INGEST
    )
    assert [kline.open_time for kline in page.klines] == [start, start + 60_000, start + 120_000]
    assert page.unconfirmed == [start + 180_000]
    assert page.next_end_ms is None and adapter_limit == 100
    full = {"code": "0", "msg": "", "data": [rows[-1]] * 100}
    assert (
        adapter.parse_rest(info, full, start - 60_000, start + 60_000, INGEST).next_end_ms == start
    )
    with pytest.raises(RestRateLimited):
        adapter.parse_rest(info, {"code": "50011", "msg": "Too Many Requests"}, 0, 1, INGEST)
    params = adapter.rest_request(info, start, start + 60_000).params
    assert params["after"] == str(start + 60_000) and params["before"] == str(start - 1)


def test_bybit_rest_rate_limit_code_and_rows() -> None:
    adapter = Bybit("linear", ["ETHUSDT"])
    info = adapter.symbols["ETHUSDT"]
    start = 1717171200000
    body = {
        "retCode": 0,
        "retMsg": "OK",
        "result": {"list": [[str(start + 60_000), "1", "2", "0.5", "1.5", "3", "4.5"],
                            [str(start), "1", "2", "0.5", "1.5", "3", "4.5"]]},
    }  # fmt: skip
    page = adapter.parse_rest(info, body, start, start + 120_000, INGEST + 120_000)
    assert [kline.open_time for kline in page.klines] == [start, start + 60_000]
    assert page.klines[0].symbol == "ETH-USDT-PERP" and page.klines[0].provenance == "rest"
    # At INGEST the newest row is the still-open bar (Bybit returns it): unconfirmed.
    open_page = adapter.parse_rest(info, body, start, start + 120_000, INGEST)
    assert [kline.open_time for kline in open_page.klines] == [start]
    assert open_page.unconfirmed == [start + 60_000]
    assert page.klines[0].quote_volume == 4.5 and page.klines[0].trades is None
    assert adapter.rest_request(info, start, start + 60_000).params["category"] == "linear"
    with pytest.raises(RestRateLimited):
        adapter.parse_rest(info, {"retCode": 10006, "retMsg": "Too many visits!"}, 0, 1, INGEST)
    with pytest.raises(RestError):
        adapter.parse_rest(info, {"retCode": 10001, "retMsg": "params error"}, 0, 1, INGEST)
