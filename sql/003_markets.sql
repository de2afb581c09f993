-- klineflow ClickHouse schema, version 3 (issue 13): the market is part of a bar's identity.
-- The symbol names the instrument (BTC-USDT spot, BTC-USDT-PERP, BTC-USD-PERP,
-- BTC-USDT-250627), and every table gains `market` after `symbol`; `klines` also records
-- `base_multiplier` (1000 for 1000PEPE-USDT-PERP) and `provenance` (ws, rest, archive; for a
-- roll-up ws only when every minute was live, else mixed).
--
-- Rows written before this migration keep their values and read as spot (their symbols are
-- all BASE-QUOTE), base_multiplier 1 and provenance 'unknown': the DEFAULTs below. `market`
-- follows from the symbol by default, so writers of the other tables need not send it.
-- Idempotent: ADD COLUMN IF NOT EXISTS.

ALTER TABLE crypto_kline.klines
    ADD COLUMN IF NOT EXISTS market LowCardinality(String)
        DEFAULT multiIf(endsWith(symbol, '-PERP'), 'perp',
                        match(symbol, '-[0-9]{6}$'), 'future', 'spot')
        AFTER symbol;

ALTER TABLE crypto_kline.klines
    ADD COLUMN IF NOT EXISTS base_multiplier UInt32 DEFAULT 1 AFTER market;

ALTER TABLE crypto_kline.klines
    ADD COLUMN IF NOT EXISTS provenance LowCardinality(String) DEFAULT 'unknown' AFTER is_closed;

ALTER TABLE crypto_kline.volume_profile
    ADD COLUMN IF NOT EXISTS market LowCardinality(String)
        DEFAULT multiIf(endsWith(symbol, '-PERP'), 'perp',
                        match(symbol, '-[0-9]{6}$'), 'future', 'spot')
        AFTER symbol;

ALTER TABLE crypto_kline.indicators
    ADD COLUMN IF NOT EXISTS market LowCardinality(String)
        DEFAULT multiIf(endsWith(symbol, '-PERP'), 'perp',
                        match(symbol, '-[0-9]{6}$'), 'future', 'spot')
        AFTER symbol;

ALTER TABLE crypto_kline.signals
    ADD COLUMN IF NOT EXISTS market LowCardinality(String)
        DEFAULT multiIf(endsWith(symbol, '-PERP'), 'perp',
                        match(symbol, '-[0-9]{6}$'), 'future', 'spot')
        AFTER symbol;
