//! The VM state machine: which operation is allowed in which state, and what it leads to.
//!
//! Every layer asks this one table: the REST handlers (409 on a refusal), the agent, the
//! hypervisor drivers. A driver reports what it observed ([`VmState::observe`]); an operation
//! is checked before it runs ([`VmState::begin`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, resources reserved, never booted.
    Created,
    /// Boot requested; the guest is starting.
    Booting,
    Running,
    Paused,
    /// A graceful stop is in flight (ACPI power button or guest shutdown).
    Stopping,
    Stopped,
    /// The guest or its hypervisor failed; the reason is kept beside the state.
    Error,
    Deleted,
    /// The node that runs the VM is unreachable; the last known state is not trusted.
    Unknown,
    /// Moving to another node (cold migration): a running guest is paused on its node until
    /// the copy runs on the target. The control plane's state only; no node reports it.
    Migrating,
}

impl VmState {
    pub const ALL: [VmState; 10] = [
        VmState::Created,
        VmState::Booting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Error,
        VmState::Deleted,
        VmState::Unknown,
        VmState::Migrating,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Booting => "booting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
            VmState::Deleted => "deleted",
            VmState::Unknown => "unknown",
            VmState::Migrating => "migrating",
        }
    }

    /// Whether a hypervisor process (or container) exists for a VM in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Booting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }

    /// Checks that `op` may start from this state and returns the state to show while it runs
    /// and the state it leads to when it succeeds.
    pub fn begin(self, op: VmOp) -> Result<Transition, InvalidTransition> {
        use VmOp::*;
        use VmState::*;
        let t = |during, after| Ok(Transition { during, after });
        match (op, self) {
            (Boot | Start, Created | Stopped) => t(Booting, Running),
            (Stop, Running | Booting | Paused) => t(Stopping, Stopped),
            (PowerButton, Running) => t(Stopping, Stopped),
            (ForceStop, Booting | Running | Paused | Stopping | Error | Unknown) => {
                t(Stopped, Stopped)
            }
            (Reboot, Running) => t(Running, Running),
            (Pause, Running) => t(Paused, Paused),
            (Resume, Paused) => t(Running, Running),
            (Snapshot, Running | Paused) => t(self, self),
            (Restore, Created | Stopped | Error) => t(Booting, Running),
            (Resize | AddDisk | ChangeDevices, Created | Running | Paused | Stopped) => {
                t(self, self)
            }
            (Migrate, Running | Paused | Stopped) => t(Migrating, self),
            (Delete, s) if s != Deleted && s != Migrating => t(s, Deleted),
            (op, state) => Err(InvalidTransition { op, state }),
        }
    }

    /// The state after the hypervisor reports `event`, whatever was requested.
    pub fn observe(self, event: VmEvent) -> VmState {
        match event {
            VmEvent::Booted | VmEvent::Resumed => VmState::Running,
            VmEvent::Paused => VmState::Paused,
            VmEvent::ShutDown => VmState::Stopped,
            VmEvent::Failed => VmState::Error,
            VmEvent::NodeLost if self == VmState::Deleted => VmState::Deleted,
            VmEvent::NodeLost => VmState::Unknown,
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation on a VM, as requested by a user or the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmOp {
    Boot,
    Start,
    /// Graceful: ACPI power button, then forced after a timeout.
    Stop,
    ForceStop,
    Reboot,
    PowerButton,
    Pause,
    Resume,
    Snapshot,
    Restore,
    Resize,
    AddDisk,
    /// Adds or removes a device or a shared directory (cold-plug: the drivers refuse it
    /// while a guest runs).
    ChangeDevices,
    Delete,
    /// Cold migration to another node.
    Migrate,
}

impl VmOp {
    pub const ALL: [VmOp; 15] = [
        VmOp::Boot,
        VmOp::Start,
        VmOp::Stop,
        VmOp::ForceStop,
        VmOp::Reboot,
        VmOp::PowerButton,
        VmOp::Pause,
        VmOp::Resume,
        VmOp::Snapshot,
        VmOp::Restore,
        VmOp::Resize,
        VmOp::AddDisk,
        VmOp::ChangeDevices,
        VmOp::Delete,
        VmOp::Migrate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmOp::Boot => "boot",
            VmOp::Start => "start",
            VmOp::Stop => "stop",
            VmOp::ForceStop => "force-stop",
            VmOp::Reboot => "reboot",
            VmOp::PowerButton => "press the power button of",
            VmOp::Pause => "pause",
            VmOp::Resume => "resume",
            VmOp::Snapshot => "snapshot",
            VmOp::Restore => "restore",
            VmOp::Resize => "resize",
            VmOp::AddDisk => "add a disk to",
            VmOp::ChangeDevices => "change the devices of",
            VmOp::Delete => "delete",
            VmOp::Migrate => "migrate",
        }
    }
}

/// What a hypervisor driver observed about a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    Booted,
    Paused,
    Resumed,
    ShutDown,
    Failed,
    NodeLost,
}

/// The states an accepted operation goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub during: VmState,
    pub after: VmState,
}

/// An operation refused because of the VM's state (HTTP 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a VM that is {state}", op.as_str())]
pub struct InvalidTransition {
    pub op: VmOp,
    pub state: VmState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmOp::*;
    use VmState::*;

    #[test]
    fn the_lifecycle_of_issue_3() {
        let mut s = Created;
        for op in [Boot, Pause, Resume, Reboot, Stop, Start, ForceStop, Delete] {
            let t = s.begin(op).unwrap();
            s = t.after;
        }
        assert_eq!(s, Deleted);
    }

    #[test]
    fn wrong_states_are_refused() {
        assert_eq!(
            Running.begin(Boot).unwrap_err().to_string(),
            "cannot boot a VM that is running"
        );
        assert!(Stopped.begin(Pause).is_err());
        assert!(Paused.begin(Pause).is_err());
        assert!(Created.begin(Reboot).is_err());
        assert!(Stopped.begin(Stop).is_err());
        for op in VmOp::ALL {
            assert!(Deleted.begin(op).is_err(), "{op:?} on a deleted VM");
        }
    }

    #[test]
    fn force_stop_gets_out_of_every_stuck_state() {
        for s in [Booting, Running, Paused, Stopping, Error, Unknown] {
            assert_eq!(s.begin(ForceStop).unwrap().after, Stopped);
        }
    }

    #[test]
    fn every_pair_is_decided_and_lands_in_a_real_state() {
        for s in VmState::ALL {
            for op in VmOp::ALL {
                if let Ok(t) = s.begin(op) {
                    assert_ne!(t.after, Unknown);
                    assert_ne!(t.during, Deleted);
                }
            }
        }
    }

    #[test]
    fn a_migration_starts_from_a_settled_state_and_blocks_the_others() {
        for s in [Running, Paused, Stopped] {
            let t = s.begin(Migrate).unwrap();
            assert_eq!((t.during, t.after), (Migrating, s));
        }
        for s in [
            Created, Booting, Stopping, Error, Unknown, Migrating, Deleted,
        ] {
            assert!(s.begin(Migrate).is_err(), "{s:?}");
        }
        for op in VmOp::ALL {
            assert!(Migrating.begin(op).is_err(), "{op:?} while migrating");
        }
    }

    #[test]
    fn observations() {
        assert_eq!(Booting.observe(VmEvent::Booted), Running);
        assert_eq!(Running.observe(VmEvent::Failed), Error);
        assert_eq!(Running.observe(VmEvent::NodeLost), Unknown);
        assert_eq!(Deleted.observe(VmEvent::NodeLost), Deleted);
    }
}
