-- klineflow ClickHouse schema, version 1 (DESIGN.md "ClickHouse").
-- Idempotent: every statement is IF NOT EXISTS, so applying the file again is harmless.
-- Prices and volumes are Float64, times DateTime64(3, 'UTC'); every table is a
-- ReplacingMergeTree on `version`, so readers use FINAL (or argMax by version).

CREATE DATABASE IF NOT EXISTS crypto_kline;

-- Applied migration files, one row per file (written by `klineflow db migrate`).
CREATE TABLE IF NOT EXISTS crypto_kline.schema_migrations
(
    version     UInt32,
    name        String,
    checksum    String,
    applied_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version;

-- Bars of every timeframe. One row per (exchange, symbol, timeframe, open_time) after FINAL.
CREATE TABLE IF NOT EXISTS crypto_kline.klines
(
    exchange                LowCardinality(String),
    symbol                  LowCardinality(String),
    timeframe               LowCardinality(String),
    open_time               DateTime64(3, 'UTC'),
    close_time              DateTime64(3, 'UTC'),
    open                    Float64,
    high                    Float64,
    low                     Float64,
    close                   Float64,
    volume                  Float64,
    quote_volume            Nullable(Float64),
    trades                  Nullable(UInt64),
    taker_buy_volume        Nullable(Float64),
    taker_buy_quote_volume  Nullable(Float64),
    is_closed               Bool,
    bars_present            UInt32,   -- 1m bars that made this bar (1 for 1m)
    bars_expected           UInt32,   -- 1m bars a complete bar of this timeframe has
    version                 UInt64,
    updated_at              DateTime64(3, 'UTC')  -- when the sink wrote the row
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, timeframe, open_time);

-- Volume profile and VWAP per window; the arrays are indexed by row (row_low[i] is the
-- lower edge of row i, each row_size wide). vwap is null for a window without volume.
CREATE TABLE IF NOT EXISTS crypto_kline.volume_profile
(
    exchange         LowCardinality(String),
    symbol           LowCardinality(String),
    timeframe        LowCardinality(String),
    window_start     DateTime64(3, 'UTC'),
    window_end       DateTime64(3, 'UTC'),
    row_size         Float64,
    row_low          Array(Float64),
    volume           Array(Float64),
    buy_volume       Array(Float64),
    poc              Float64,
    value_area_low   Float64,
    value_area_high  Float64,
    vwap             Nullable(Float64),
    total_volume     Float64,
    version          UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (exchange, symbol, timeframe, window_start);

-- Indicators on closed bars; null while an indicator is still warming up.
CREATE TABLE IF NOT EXISTS crypto_kline.indicators
(
    exchange     LowCardinality(String),
    symbol       LowCardinality(String),
    timeframe    LowCardinality(String),
    open_time    DateTime64(3, 'UTC'),
    rsi_14       Nullable(Float64),
    macd         Nullable(Float64),
    macd_signal  Nullable(Float64),
    macd_hist    Nullable(Float64),
    bb_middle    Nullable(Float64),
    bb_upper     Nullable(Float64),
    bb_lower     Nullable(Float64),
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, timeframe, open_time);

-- Pattern signals of closed bars. `source` is in the key: the rules signal and a model's
-- signal for the same bar are different rows, not versions of one row.
CREATE TABLE IF NOT EXISTS crypto_kline.signals
(
    exchange        LowCardinality(String),
    symbol          LowCardinality(String),
    timeframe       LowCardinality(String),
    open_time       DateTime64(3, 'UTC'),
    source          LowCardinality(String),   -- 'rules' or the model name
    pattern         String,
    recommendation  LowCardinality(String),
    confidence      Nullable(Float64),
    key_levels      Array(Float64),
    latency_ms      Nullable(UInt64),         -- null for rules (no call made)
    tokens          Nullable(UInt64),         -- null when the API reports no usage
    cached          Bool,
    degraded        Bool,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(open_time)
ORDER BY (exchange, symbol, timeframe, open_time, source);
