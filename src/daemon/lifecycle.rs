//! The VM lifecycle: its states and the transitions between them, in one
//! place. Every operation on a VM asks [`Transition::check`] before it
//! touches anything, records the transition's `during` state (its intent)
//! before its first side effect, and its `to` state once done. After a
//! crash, [`recover`] says how a record converges to what is really on the
//! host (is a VMM running on the VM's disk or not).
//!
//! ```text
//!             create                 stop
//!   (none) ─► creating ──launched──► running ──► stopping ──► stopped
//!                │                    ▲  │ died                 │
//!                │ failed: undone     │  └──────────► stopped   │
//!                ▼                    └── starting ◄── start ───┘
//!              (none)
//!   destroy: from any state ─► destroying ─► (none)
//!   resize:  stopped ─► stopped (disk, vCPUs, memory; no in-progress state:
//!            growing the disk file is idempotent)
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Create is in progress.
    Creating,
    /// Start is in progress.
    Starting,
    Running,
    /// Stop is in progress.
    Stopping,
    Stopped,
    /// Destroy is in progress.
    Destroying,
}

impl VmState {
    pub const ALL: [VmState; 6] = [
        Self::Creating,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Destroying,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Destroying => "destroying",
        }
    }
}

/// Something that moves a VM from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The VMM launched: the create is complete.
    Launched,
    Start,
    Stop,
    /// The VMM was found dead (the guest powered off, or crashed).
    Died,
    Destroy,
    /// Disk, vCPUs or memory changed; only while stopped.
    Resize,
}

/// A transition asked of a VM in a state that does not allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongState {
    pub state: VmState,
    /// The state it must be in, in words.
    pub wanted: &'static str,
    /// What the user asked, in words ("stop it").
    pub action: &'static str,
}

impl Transition {
    /// The states this transition may start from.
    pub fn from(self) -> &'static [VmState] {
        use VmState::*;
        match self {
            Self::Launched => &[Creating],
            Self::Start | Self::Resize => &[Stopped],
            Self::Stop | Self::Died => &[Running],
            Self::Destroy => &VmState::ALL,
        }
    }

    /// The state recorded while it is under way (before its first side
    /// effect), if it has one.
    pub fn during(self) -> Option<VmState> {
        match self {
            Self::Start => Some(VmState::Starting),
            Self::Stop => Some(VmState::Stopping),
            Self::Destroy => Some(VmState::Destroying),
            Self::Launched | Self::Died | Self::Resize => None,
        }
    }

    /// Where it ends; `None` when the VM is gone.
    pub fn to(self) -> Option<VmState> {
        match self {
            Self::Launched | Self::Start => Some(VmState::Running),
            Self::Stop | Self::Died | Self::Resize => Some(VmState::Stopped),
            Self::Destroy => None,
        }
    }

    fn action(self) -> &'static str {
        match self {
            Self::Launched => "finish creating it",
            Self::Start => "start it",
            Self::Stop => "stop it",
            Self::Died => "mark it stopped",
            Self::Destroy => "destroy it",
            Self::Resize => "resize it",
        }
    }

    /// Whether a VM in `state` may take this transition.
    pub fn check(self, state: VmState) -> Result<(), WrongState> {
        if self.from().contains(&state) {
            return Ok(());
        }
        let wanted = match self.from() {
            [one] => one.as_str(),
            _ => "in another state",
        };
        Err(WrongState {
            state,
            wanted,
            action: self.action(),
        })
    }
}

/// A wrong-state error unless the VM is in `wanted`, for requests that need
/// a VM in one state without changing it (a console needs it running).
pub fn require(state: VmState, wanted: VmState, action: &'static str) -> Result<(), WrongState> {
    if state == wanted {
        return Ok(());
    }
    Err(WrongState {
        state,
        wanted: wanted.as_str(),
        action,
    })
}

/// Whether a VM in this state may have a VMM process (its tap and
/// runtime files must stay).
pub fn has_vmm(state: VmState) -> bool {
    !matches!(state, VmState::Stopped)
}

/// What recovery does with a VM, given its recorded state and whether a
/// VMM runs on its disk right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing to do: the record is true.
    Keep,
    /// A VMM runs: the VM is running, whatever the record said (a create
    /// or start that launched, a stop that did not finish, a record that
    /// was behind). Its tap and files stay.
    Adopt,
    /// No VMM: the VM is stopped; its tap and runtime files are released.
    MarkStopped,
    /// A create that never launched: undo everything it made.
    UndoCreate,
    /// A destroy under way: finish it.
    FinishDestroy,
}

/// The recovery table: a record converges to the host's truth.
pub fn recover(state: VmState, vmm_alive: bool) -> Recovery {
    use Recovery::*;
    use VmState::*;
    match (state, vmm_alive) {
        (Destroying, _) => FinishDestroy,
        (Creating, false) => UndoCreate,
        (Running, true) => Keep,
        (Creating | Starting | Stopping | Stopped, true) => Adopt,
        (Starting | Running | Stopping, false) => MarkStopped,
        (Stopped, false) => Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_diagram() {
        use VmState::*;
        assert!(Transition::Start.check(Stopped).is_ok());
        assert!(Transition::Stop.check(Running).is_ok());
        assert!(Transition::Launched.check(Creating).is_ok());
        for s in VmState::ALL {
            assert!(Transition::Destroy.check(s).is_ok());
        }
        let e = Transition::Start
            .check(Running)
            .expect_err("running cannot start");
        assert_eq!((e.wanted, e.action), ("stopped", "start it"));
        let e = Transition::Stop
            .check(Stopped)
            .expect_err("stopped cannot stop");
        assert_eq!((e.wanted, e.action), ("running", "stop it"));
        assert!(Transition::Stop.check(Creating).is_err());
        assert!(Transition::Start.check(Starting).is_err());
        assert!(Transition::Resize.check(Stopped).is_ok());
        let e = Transition::Resize
            .check(Running)
            .expect_err("running cannot resize");
        assert_eq!((e.wanted, e.action), ("stopped", "resize it"));
        assert_eq!(Transition::Died.to(), Some(Stopped));
        assert_eq!(Transition::Destroy.to(), None);
        assert_eq!(Transition::Stop.during(), Some(Stopping));
    }

    #[test]
    fn recovery_never_strips_a_live_vmm_and_never_keeps_a_dead_one_running() {
        for s in VmState::ALL {
            let live = recover(s, true);
            assert!(
                matches!(
                    live,
                    Recovery::Keep | Recovery::Adopt | Recovery::FinishDestroy
                ),
                "{s:?} with a live VMM: {live:?}"
            );
            let dead = recover(s, false);
            assert_ne!(dead, Recovery::Adopt, "{s:?} without a VMM");
            if s == VmState::Running {
                assert_eq!(dead, Recovery::MarkStopped);
            }
        }
        assert_eq!(recover(VmState::Creating, false), Recovery::UndoCreate);
        assert_eq!(recover(VmState::Stopped, true), Recovery::Adopt);
    }

    #[test]
    fn states_serialise_lowercase() {
        for s in VmState::ALL {
            assert_eq!(
                serde_json::to_string(&s).expect("json"),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
