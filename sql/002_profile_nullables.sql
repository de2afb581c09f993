-- klineflow ClickHouse schema, version 2: volume profiles of windows without volume.
-- A window whose bars all have zero volume (a halted market, empty minutes) has no point of
-- control and no value area: the job writes NULL there rather than a made-up price (vwap
-- was Nullable already). Idempotent: modifying a column to the type it has is a no-op.
--
-- buy_volume stays Array(Float64) (ClickHouse has no Nullable(Array)): it holds one value
-- per row when every bar of the window has taker-buy volume (Binance), and is the empty
-- array when some bar lacks it (OKX, Bybit): unknown, never zeros. A profile always has at
-- least one row, so `empty(buy_volume)` says "unknown" without a separate flag column.

ALTER TABLE crypto_kline.volume_profile
    MODIFY COLUMN poc Nullable(Float64);

ALTER TABLE crypto_kline.volume_profile
    MODIFY COLUMN value_area_low Nullable(Float64);

ALTER TABLE crypto_kline.volume_profile
    MODIFY COLUMN value_area_high Nullable(Float64);

ALTER TABLE crypto_kline.volume_profile
    COMMENT COLUMN buy_volume 'per-row taker buy volume; empty array = unknown (some bar of the window has no taker-buy volume)';
