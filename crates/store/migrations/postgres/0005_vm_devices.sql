-- A VM's devices and shares, postgres dialect. Keep it in step with ../sqlite/0005_vm_devices.sql.
--
-- devices: JSON array of what its node reports it has (`/vm/device/add`, `/vm/fs/add`),
--   each `{"id": "dev0", "kind": "rng"}` and the like (vmfleet_core::VmDevice), in order.
ALTER TABLE vms ADD COLUMN devices TEXT NOT NULL DEFAULT '[]';
