-- A VM's migration ticket, postgres dialect. Keep it in step with ../sqlite/0004_migrations.sql.
--
-- migration_id: the ticket of `/vm/migrate/from` (NULL: none); one VM per ticket.
-- migration_node_id: the node receiving the VM; room is reserved there for it (the node's
--   used resources count it) until the ticket expires or the migration ends.
-- migration_expires_at: when the reservation lapses (unix milliseconds), extended while the
--   migration runs.
ALTER TABLE vms ADD COLUMN migration_id TEXT;
ALTER TABLE vms ADD COLUMN migration_node_id TEXT REFERENCES nodes (id) ON DELETE SET NULL;
ALTER TABLE vms ADD COLUMN migration_expires_at BIGINT;
CREATE UNIQUE INDEX vms_migration_id ON vms (migration_id);
CREATE INDEX vms_migration_node ON vms (migration_node_id);
