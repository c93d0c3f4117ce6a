-- The W3C trace context ({"traceparent": ...}) of the transaction that
-- recorded an event, so the relay's publish continues that trace
-- (wadud/tracing.py). NULL while tracing is off.
ALTER TABLE outbox ADD COLUMN trace jsonb;
