"""Throughput of the ways to insert ``VersionedBar`` batches into chdb; prints JSON.

Every method starts from the same list of bars (so conversion cost counts), inserts it in
batches into a fresh ``crypto_kline.klines`` in a temporary chdb directory, then reads the
table back and checks that every value (nulls, DateTime64(3) ms, UInt64 > 2**63, bools,
denormal floats) round-tripped exactly. ``connectors.clickhouse.ChdbWriter`` uses the
fastest exact method.

    .venv/bin/python bench/bench_clickhouse_insert.py [--rows 20000] [--batch 500 --batch 5000]
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from connectors.clickhouse import (
    KLINE_COLUMNS,
    ChdbWriter,
    bars_to_columns,
    columns_to_arrow,
    open_writer,
)
from udfs.record import Kline, VersionedBar, now_ms

Method = Callable[[ChdbWriter, Sequence[VersionedBar]], None]
_INSERT = f"INSERT INTO crypto_kline.klines ({', '.join(KLINE_COLUMNS)})"
_TIME_COLUMNS = ("open_time", "close_time", "updated_at")


def make_bars(count: int) -> list[VersionedBar]:
    """``count`` 1m bars of one series with every kind of awkward value mixed in."""
    bars = []
    for i in range(count):
        open_time = 1_700_000_040_000 + i * 60_000
        volume = (1e300, 5e-324, 0.0)[i % 3] if i < 3 else 1.0 + i / 7
        kline = Kline(
            exchange="binance",
            symbol="BTC-USDT",
            raw_symbol="BTCUSDT",
            timeframe="1m",
            open_time=open_time,
            close_time=open_time + 59_999,
            open=100.0 + i / 3,
            high=101.0 + i / 3,
            low=99.0 + i / 3,
            close=100.5 + i / 3,
            volume=volume,
            quote_volume=None if i % 3 == 0 else volume * 100.1,
            trades=None if i % 5 == 0 else (2**63 + i if i % 7 == 0 else i),
            taker_buy_volume=None if i % 2 else volume / 3,
            taker_buy_quote_volume=None if i % 4 else 0.1 + i,
            is_closed=bool(i % 2),
            event_time=open_time + 1,
            ingest_time=open_time + 2,
        )
        bars.append(VersionedBar(kline, version=i + 1, bars_present=1, bars_expected=1))
    return bars


def _columns(bars: Sequence[VersionedBar]) -> dict[str, list[Any]]:
    return bars_to_columns(bars, now_ms())


def _json_rows(bars: Sequence[VersionedBar]) -> bytes:
    columns = _columns(bars)
    for name in _TIME_COLUMNS:  # DateTime64 text: seconds with a fraction (ints read as s)
        columns[name] = [f"{value // 1000}.{value % 1000:03d}" for value in columns[name]]
    names = list(columns)
    return b"".join(
        orjson.dumps(dict(zip(names, values, strict=True))) + b"\n"
        for values in zip(*columns.values(), strict=True)
    )


def _arrow(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> Any:
    return columns_to_arrow(_columns(bars), writer._table_types("klines"))


def json_each_row_in_query(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """``INSERT ... FORMAT JSONEachRow`` with the rows appended to the statement text."""
    writer._connection().query(f"{_INSERT} FORMAT JSONEachRow\n" + _json_rows(bars).decode())


def json_each_row_stream(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """``send_insert(..., "JSONEachRow")`` with orjson-encoded rows."""
    with writer._connection().send_insert(_INSERT, "JSONEachRow") as inserter:
        inserter.append(_json_rows(bars))
        inserter.finish()


def arrow_stream(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """``send_insert(..., "ArrowStream")`` with an Arrow IPC stream."""
    pa = importlib.import_module("pyarrow")
    table = _arrow(writer, bars)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    with writer._connection().send_insert(_INSERT, "ArrowStream") as inserter:
        inserter.append(sink.getvalue().to_pybytes())
        inserter.finish()


def parquet_stream(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """``send_insert(..., "Parquet")`` with an uncompressed Parquet file."""
    pq = importlib.import_module("pyarrow.parquet")
    buffer = io.BytesIO()
    pq.write_table(_arrow(writer, bars), buffer, compression="none")
    with writer._connection().send_insert(_INSERT, "Parquet") as inserter:
        inserter.append(buffer.getvalue())
        inserter.finish()


def python_table_function_arrow(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """``INSERT ... SELECT * FROM Python(arrow_table)`` (chdb reads the local variable)."""
    arrow_table = _arrow(writer, bars)
    assert arrow_table.num_rows == len(bars)
    writer._connection().query(f"{_INSERT} SELECT * FROM Python(arrow_table)")


def python_table_function_pandas(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """``INSERT ... SELECT * FROM Python(df)`` over a pandas DataFrame (nullable int dtypes)."""
    import pandas as pd

    pa = importlib.import_module("pyarrow")
    nullable_ints = {pa.uint64(): pd.UInt64Dtype(), pa.uint32(): pd.UInt32Dtype()}
    df = _arrow(writer, bars).to_pandas(types_mapper=nullable_ints.get)
    assert len(df) == len(bars)
    writer._connection().query(f"{_INSERT} SELECT * FROM Python(df)")


def writer_insert_bars(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> None:
    """The production path, ``ChdbWriter.insert_bars``."""
    writer.insert_bars(bars)


METHODS: dict[str, Method] = {
    "json_each_row_in_query": json_each_row_in_query,
    "json_each_row_stream": json_each_row_stream,
    "arrow_stream": arrow_stream,
    "parquet_stream": parquet_stream,
    "python_table_function_arrow": python_table_function_arrow,
    "python_table_function_pandas": python_table_function_pandas,
    "writer_insert_bars": writer_insert_bars,
}


def _mismatch(writer: ChdbWriter, bars: Sequence[VersionedBar]) -> str | None:
    """None when the table holds exactly ``bars``, else the first difference."""
    stored = writer.fetch_klines("binance", "BTC-USDT", "1m")
    if len(stored) != len(bars):
        return f"{len(stored)} rows stored, {len(bars)} inserted"
    for row, bar in zip(stored, bars, strict=True):
        expected = bars_to_columns([bar], row["updated_at"])
        for name in KLINE_COLUMNS:
            got, want = row[name], expected[name][0]
            if got != want or type(got) is not type(want):
                return f"{name} at open_time {bar.kline.open_time}: {got!r} != {want!r}"
    return None


def run(rows: int, batch_sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    """Time every method at every batch size; best of ``repeats`` runs."""
    bars = make_bars(rows)
    results: dict[str, Any] = {"rows": rows, "repeats": repeats, "methods": {}}
    with tempfile.TemporaryDirectory(prefix="klineflow-bench-") as tmp:
        writer = open_writer(f"chdb://{Path(tmp) / 'chdb'}")
        assert isinstance(writer, ChdbWriter)
        try:
            for name, method in METHODS.items():
                per_batch: dict[str, Any] = {}
                for batch in batch_sizes:
                    best = float("inf")
                    error: str | None = None
                    for _ in range(repeats):
                        writer._execute("TRUNCATE TABLE crypto_kline.klines")
                        started = time.perf_counter()
                        try:
                            for start in range(0, rows, batch):
                                method(writer, bars[start : start + batch])
                        except RuntimeError as exc:
                            error = str(exc).splitlines()[0][:200]
                            break
                        best = min(best, time.perf_counter() - started)
                    if error is None:
                        error = _mismatch(writer, bars)
                    per_batch[str(batch)] = {
                        "rows_per_s": None if best == float("inf") else round(rows / best),
                        "exact": error is None,
                        **({"problem": error} if error else {}),
                    }
                results["methods"][name] = per_batch
        finally:
            writer.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the comparison and print it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="bars per method run")
    parser.add_argument(
        "--batch", type=int, action="append", help="batch size (repeatable; default 500, 5000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per case, best kept")
    args = parser.parse_args(argv)
    result = run(args.rows, args.batch or [500, 5000], args.repeats)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
