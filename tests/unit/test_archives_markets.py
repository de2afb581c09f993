"""Binance derivatives archives (issue 13): futures/um and futures/cm, recognised or refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.archives import (
    Kline,
    Rejection,
    ReplayConfigError,
    file_layout,
    iter_source,
    plan_sources,
)
from tests.unit.hostile_corpus import HOSTILE_SETTINGS

NOW = 1_767_225_600_000
UM_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)
CM_HEADER = (
    "open_time,open,high,low,close,volume,close_time,base_asset_volume,count,taker_buy_volume,"
    "taker_buy_base_asset_volume,ignore"
)
# Rows in the real layouts (2024-01-01 00:00 and 00:01 UTC, ms times).
UM_ROWS = (
    "1704067200000,42314.00,42335.80,42289.60,42331.90,289.641,1704067259999,12254243.25210,"
    "3162,151.732,6419777.62940,0",
    "1704067260000,42331.90,42337.00,42310.10,42316.20,198.227,1704067319999,8389081.69420,"
    "2224,89.602,3791986.42600,0",
)
CM_ROWS = (
    "1704067200000,42288.6,42310.0,42280.1,42305.2,3861,1704067259999,9.12748337,402,1927,"
    "4.55535066,0",
    "1704067260000,42305.2,42318.4,42300.0,42310.9,1250,1704067319999,2.95428720,188,700,"
    "1.65440210,0",
)
SPOT_US_ROW = (
    "1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,"
    "8.21827000,1735689659999999,768978.14123570,2397,3.76543000,352290.03637370,0"
)


def clock() -> int:
    return NOW


def write_zip(path: Path, csv_lines: tuple[str, ...] | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.name.replace(".zip", ".csv"), "\n".join(csv_lines) + "\n")
    return path


def bars(path: Path, **overrides: str) -> list[Kline]:
    (source,) = plan_sources([path], **overrides)
    out = list(iter_source(source, clock=clock))
    assert not [row for row in out if isinstance(row, Rejection)], out
    return [row for row in out if isinstance(row, Kline)]


def published(root: Path, market: str, symbol: str) -> Path:
    """The data.binance.vision layout of a daily 1m archive."""
    return (
        root / "data" / market / "daily" / "klines" / symbol / "1m" / f"{symbol}-1m-2024-01-01.zip"
    )


@pytest.mark.parametrize("header", [True, False])
def test_usdt_margined_archive_is_a_perp_series_recognised_from_its_path(
    tmp_path: Path, header: bool
) -> None:
    lines = [UM_HEADER, *UM_ROWS] if header else list(UM_ROWS)
    path = write_zip(published(tmp_path, "futures/um", "BTCUSDT"), lines)
    first, second = bars(path)
    assert first.series_key == "binance:BTC-USDT-PERP:1m"
    assert (first.market, first.provenance, first.raw_symbol) == ("perp", "archive", "BTCUSDT")
    assert first.volume == 289.641 and first.quote_volume == 12254243.2521
    assert second.open_time == first.open_time + 60_000


@pytest.mark.parametrize("header", [True, False])
def test_coin_margined_archive_converts_contracts_to_base_and_usd(
    tmp_path: Path, header: bool
) -> None:
    lines = [CM_HEADER, *CM_ROWS] if header else list(CM_ROWS)
    path = write_zip(published(tmp_path, "futures/cm", "BTCUSD_PERP"), lines)
    first, _ = bars(path)
    assert first.series_key == "binance:BTC-USD-PERP:1m"
    assert first.volume == 9.12748337  # BTC, not 3861 contracts
    assert first.quote_volume == 386_100.0  # 3861 x 100 USD
    assert first.taker_buy_volume == 4.55535066 and first.taker_buy_quote_volume == 192_700.0
    assert first.low <= first.quote_volume / first.volume <= first.high


def test_coin_margined_archive_is_recognised_from_its_symbol_and_header(tmp_path: Path) -> None:
    bare = write_zip(tmp_path / "ETHUSD_PERP-1m-2024-01-01.zip", [CM_HEADER, *_eth(CM_ROWS)])
    (first, _) = bars(bare)
    assert first.symbol == "ETH-USD-PERP" and first.quote_volume == 38_610.0  # 10 USD contracts
    # A COIN-M header says so even when the file name gives no market.
    plain = tmp_path / "klines.csv"
    plain.write_text("\n".join([CM_HEADER, *CM_ROWS]) + "\n")
    (source,) = plan_sources([plain], symbol="BTCUSD_PERP", timeframe="1m")
    assert source.series is not None and source.series.margin == "inverse"


def _eth(rows: tuple[str, ...]) -> list[str]:
    """The CM rows at ETH prices: same contracts (10 USD each), base volumes to match."""
    out = []
    for row in rows:
        f = row.split(",")
        for i in (1, 2, 3, 4):
            f[i] = f"{float(f[i]) / 18.4:.2f}"
        f[7] = f"{float(f[5]) * 10 / float(f[4]):.8f}"
        f[10] = f"{float(f[9]) * 10 / float(f[4]):.8f}"
        out.append(",".join(f))
    return out


def test_a_futures_layout_outside_its_path_is_refused_unless_market_says(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "BTCUSDT-1m-2024-01-01.zip", [UM_HEADER, *UM_ROWS])
    with pytest.raises(ReplayConfigError, match=r"cannot tell the market.*pass --market"):
        plan_sources([path])
    (first, _) = bars(path, market="perp")
    assert first.symbol == "BTC-USDT-PERP"
    (spot, _) = bars(path, market="spot")
    assert spot.symbol == "BTC-USDT"
    with pytest.raises(ReplayConfigError, match="is a perp instrument"):
        plan_sources([path], market="future")


def test_spot_and_perp_archives_of_one_pair_and_minute_are_two_series(tmp_path: Path) -> None:
    spot = bars(write_zip(published(tmp_path, "spot", "BTCUSDT"), list(UM_ROWS)))
    perp = bars(write_zip(published(tmp_path, "futures/um", "BTCUSDT"), [UM_HEADER, *UM_ROWS]))
    assert spot[0].open_time == perp[0].open_time
    assert spot[0].series_key != perp[0].series_key
    assert (spot[0].symbol, perp[0].symbol) == ("BTC-USDT", "BTC-USDT-PERP")


def test_dated_future_archive(tmp_path: Path) -> None:
    path = write_zip(published(tmp_path, "futures/um", "BTCUSDT_240329"), [UM_HEADER, *UM_ROWS])
    (first, _) = bars(path)
    assert (first.symbol, first.market) == ("BTC-USDT-240329", "future")


def test_spot_layouts_stay_spot(tmp_path: Path) -> None:
    # No header (the historic layout) and a header with µs times (2025 spot) are spot.
    old = write_zip(tmp_path / "BTCUSDT-1m-2024-01-01.zip", list(UM_ROWS))
    assert bars(old)[0].symbol == "BTC-USDT"
    new = write_zip(tmp_path / "new" / "BTCUSDT-1m-2025-01-01.zip", [UM_HEADER, SPOT_US_ROW])
    assert bars(new)[0].symbol == "BTC-USDT"


@HOSTILE_SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=3))
def test_file_layout_takes_any_bytes(head: list[bytes]) -> None:
    assert file_layout(head) in ("spot", "coin-m", "futures-like")


@HOSTILE_SETTINGS
@given(
    st.text(max_size=60),
    st.one_of(st.none(), st.sampled_from(["spot", "perp", "future", "swap"])),
    st.lists(st.binary(max_size=120), max_size=2),
)
def test_resolve_series_refuses_only_with_a_replay_config_error(
    name: str, market: str | None, head: list[bytes]
) -> None:
    from connectors.archives import resolve_series

    try:
        series = resolve_series(name, market=market, head=head)
    except ReplayConfigError as exc:
        assert str(exc)
        return
    assert series.market in ("spot", "perp", "future")
    assert market is None or series.market == market
