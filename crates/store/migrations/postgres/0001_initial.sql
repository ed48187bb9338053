-- vmfleet's schema, PostgreSQL dialect. Keep it in step with ../sqlite/0001_initial.sql: the two
-- hold the same tables, columns, constraints and indexes, and the store's tests run on both.
--
-- Conventions (both dialects): instants are BIGINT unix milliseconds; wallet addresses are
-- `0x` + 40 lowercase hex digits; JSON is TEXT; enums are TEXT with a CHECK; sizes are BIGINT.
-- (Only types that sqlx's Any driver maps: no TIMESTAMPTZ, JSONB or NUMERIC in result columns.)

CREATE TABLE users (
    address     TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('standard', 'privileged', 'admin')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE nodes (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    host_key_hash      TEXT NOT NULL UNIQUE,
    status             TEXT NOT NULL CHECK (status IN ('ONLINE', 'OFFLINE', 'MAINTENANCE')),
    cap_vcpus          BIGINT NOT NULL DEFAULT 0,
    cap_memory_mib     BIGINT NOT NULL DEFAULT 0,
    cap_disk_gib       BIGINT NOT NULL DEFAULT 0,
    cap_gpus           BIGINT NOT NULL DEFAULT 0,
    last_heartbeat_at  BIGINT,
    metrics            TEXT,
    -- Bumped by every placement on the node: the row lock that serialises placements.
    placement_seq      BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL
);

-- VMs and containers. Deleting one is soft (state 'deleted'): its rentals and usage keep
-- pointing at it, and its name becomes free again.
CREATE TABLE vms (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('vm', 'container')),
    owner         TEXT NOT NULL REFERENCES users (address),
    name          TEXT NOT NULL,
    node_id       TEXT REFERENCES nodes (id) ON DELETE SET NULL,
    spec          TEXT NOT NULL,
    vcpus         BIGINT NOT NULL,
    memory_mib    BIGINT NOT NULL,
    disk_gib      BIGINT NOT NULL,
    gpus          BIGINT NOT NULL,
    state         TEXT NOT NULL,
    state_reason  TEXT,
    ip            TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);
CREATE UNIQUE INDEX vms_owner_name ON vms (owner, name) WHERE state <> 'deleted';
CREATE INDEX vms_node ON vms (node_id) WHERE state <> 'deleted';

-- A period during which a VM or container runs on a node, at a fixed size.
CREATE TABLE rentals (
    id          TEXT PRIMARY KEY,
    vm_id       TEXT NOT NULL REFERENCES vms (id),
    owner       TEXT NOT NULL REFERENCES users (address),
    node_id     TEXT NOT NULL,
    vcpus       BIGINT NOT NULL,
    memory_mib  BIGINT NOT NULL,
    disk_gib    BIGINT NOT NULL,
    gpus        BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT
);
CREATE UNIQUE INDEX rentals_open ON rentals (vm_id) WHERE ended_at IS NULL;

-- What an ended rental consumed; node_id and owner are copied so the history outlives nodes.
CREATE TABLE usage_records (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rental_id          TEXT NOT NULL UNIQUE REFERENCES rentals (id),
    vm_id              TEXT NOT NULL,
    owner              TEXT NOT NULL,
    node_id            TEXT NOT NULL,
    period_start       BIGINT NOT NULL,
    period_end         BIGINT NOT NULL,
    vcpu_millis        BIGINT NOT NULL,
    memory_mib_millis  BIGINT NOT NULL,
    gpu_millis         BIGINT NOT NULL
);
CREATE INDEX usage_records_owner ON usage_records (owner);
CREATE INDEX usage_records_node ON usage_records (node_id);

CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE nonces (
    nonce       TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX nonces_expiry ON nonces (expires_at);

CREATE TABLE api_tokens (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner       TEXT NOT NULL REFERENCES users (address),
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX api_tokens_owner_name ON api_tokens (owner, name) WHERE revoked_at IS NULL;
