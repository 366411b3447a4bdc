//! The VM lifecycle: its states and the transitions between them, in one
//! place. Every operation on a VM asks [`Transition::check`] before it
//! touches anything, so a wrong-state request is refused the same way
//! everywhere, and the journal of an operation (its record written before
//! the first side effect) names the state it is in.
//!
//! ```text
//!            create                 stop / died
//!   (none) ─────────► creating ──► running ─────────► stopped
//!                        │  launch    ▲                 │
//!                        │            └─────── start ───┘
//!                        └─ failed: undone ─► (none)
//!   destroy: from any state ─► (none)
//!   resize:  stopped ─► stopped (disk, vCPUs, memory)
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Create is in progress (a record in this state after a daemon crash is undone).
    Creating,
    Running,
    Stopped,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
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
            Self::Destroy => &[Creating, Running, Stopped],
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

/// Whether a VM in this state should have a VMM process.
pub fn has_vmm(state: VmState) -> bool {
    state == VmState::Running
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
        for s in [Creating, Running, Stopped] {
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
        assert!(Transition::Resize.check(Stopped).is_ok());
        let e = Transition::Resize
            .check(Running)
            .expect_err("running cannot resize");
        assert_eq!((e.wanted, e.action), ("stopped", "resize it"));
        assert_eq!(Transition::Died.to(), Some(Stopped));
        assert_eq!(Transition::Destroy.to(), None);
    }

    #[test]
    fn states_serialise_lowercase() {
        assert_eq!(
            serde_json::to_string(&VmState::Running).expect("json"),
            "\"running\""
        );
    }
}
