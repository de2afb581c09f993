-- A reduced klineflow schema for ClickHouse 18.16 (Debian's clickhouse-server), used only by
-- tests/integration/test_clickhouse_server.py to exercise the native-protocol writer on the
-- wire: same database, table and column names as sql/001_schema.sql, with the types 18.16
-- has (no DateTime64 or Bool; times are epoch-ms Int64, flags UInt8).

CREATE DATABASE IF NOT EXISTS crypto_kline;

CREATE TABLE IF NOT EXISTS crypto_kline.schema_migrations
(
    version     UInt32,
    name        String,
    checksum    String,
    applied_at  Int64
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version;

CREATE TABLE IF NOT EXISTS crypto_kline.klines
(
    exchange                String,
    symbol                  String,
    market                  String,
    base_multiplier         UInt32,
    timeframe               String,
    open_time               Int64,
    close_time              Int64,
    open                    Float64,
    high                    Float64,
    low                     Float64,
    close                   Float64,
    volume                  Float64,
    quote_volume            Nullable(Float64),
    trades                  Nullable(UInt64),
    taker_buy_volume        Nullable(Float64),
    taker_buy_quote_volume  Nullable(Float64),
    is_closed               UInt8,
    provenance              String,
    bars_present            UInt32,
    bars_expected           UInt32,
    version                 UInt64,
    updated_at              Int64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY intDiv(open_time, 2592000000)
ORDER BY (exchange, symbol, timeframe, open_time);
