-- When each version event was published (its AMQP timestamp, else the time the
-- worker received it). Of two events for the same (component, train, version),
-- the later publish wins whatever order they arrive in: a redelivery, a slower
-- replica or a replay of an old event cannot overwrite a newer release. Rows the
-- older service wrote keep NULL here and are replaced by any publish. Additive.
ALTER TABLE versions ADD COLUMN IF NOT EXISTS published_at timestamp;
