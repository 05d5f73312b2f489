-- Tables of the Rust re-implementation's command bus; not part of the original schema.

-- Commands can be redelivered (crash before ack). A handler inserts its command id here in
-- the same transaction as its effects, so a redelivered command has exactly one effect; the
-- stored result lets a retry answer the caller the same way the first run did.
CREATE TABLE processed_commands (
    id           UUID        PRIMARY KEY,
    kind         VARCHAR(64) NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    result       JSONB
);
-- Old rows are pruned once redelivery of their command is no longer possible.
CREATE INDEX ix_processed_commands_processed_at ON processed_commands (processed_at);

-- Effects of the echo (no-op) command used by tests and benchmarks: one row per command id
-- lets them check that each command took effect exactly once.
CREATE TABLE bus_echo_effects (
    command_id UUID        PRIMARY KEY,
    payload    TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
