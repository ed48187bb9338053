-- What the scheduler and the agents say about a workload's current run, sqlite dialect. Keep it
-- in step with ../postgres/0002_instances.sql.
--
-- rental_id: the rental (seed 001 `rentalId`) of the run dispatched to the workload's node,
--   set before `start_instance` is sent, so `instance_started`/`instance_stopped` find
--   their workload; a retry on another node gets a new one. At most one workload per rental.
-- container_id, connection_info (JSON): what the agent reported in `instance_started`.
-- unknown_since: when the workload's node went offline (state 'unknown'); what a rental that
--   ends while unknown is billed up to.
ALTER TABLE vms ADD COLUMN rental_id TEXT;
ALTER TABLE vms ADD COLUMN container_id TEXT;
ALTER TABLE vms ADD COLUMN connection_info TEXT;
ALTER TABLE vms ADD COLUMN unknown_since BIGINT;
CREATE UNIQUE INDEX vms_rental ON vms (rental_id);
