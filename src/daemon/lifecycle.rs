//! The VM lifecycle: its states and the transitions between them, in one
//! place. Every operation on a VM asks [`Transition::check`] before it
//! touches anything, records the transition's `during` state (its intent)
//! before its first side effect, and its `to` state once done, or its
//! `failed` state when it fails once under way (the manager's one guard,
//! `manager::operation`, does all three from this table). After a crash,
//! [`recover`] says how a record converges to what is really on the host
//! (is a VMM running on the VM's disk or not).
//!
//! ```text
//!             create                 stop
//!   (none) ─► creating ──launched──► running ──► stopping ──► stopped
//!                │                    ▲  │ died                 │
//!                │ failed: undone     │  └──────────► stopped   │
//!                ▼                    └── starting ◄── start ───┘
//!              (none)
//!   destroy: from any state ─► destroying ─► (none)
//!
//!   running ──pause──► pausing ──► paused ──resume/start──► resuming ──► running
//!   paused ──stop──► stopping ──► stopped        (the memory state is discarded)
//!   running ──checkpoint──► checkpointing ──► running
//!   running | paused | stopped ──restore──► restoring ──► running
//!   resize:  stopped ─► stopped (disk, vCPUs, memory; no in-progress state:
//!            growing the disk file is idempotent)
//!
//!   failed once under way (what it did undone):  start, restore ─► stopped
//!   pause, checkpoint ─► running   resume ─► paused   resize ─► stopped
//!   destroy ─► destroying (try again)   create ─► undone (none)
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
    /// Pause is in progress (the memory state is being saved).
    Pausing,
    /// No VMM: the memory and device state wait in the VM's `paused/`.
    Paused,
    /// Resume is in progress (a VMM is loading the saved state).
    Resuming,
    /// A checkpoint is being taken (the guest is briefly paused).
    Checkpointing,
    /// A restore to a checkpoint is in progress.
    Restoring,
}

impl VmState {
    pub const ALL: [VmState; 11] = [
        Self::Creating,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Destroying,
        Self::Pausing,
        Self::Paused,
        Self::Resuming,
        Self::Checkpointing,
        Self::Restoring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Destroying => "destroying",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
            Self::Checkpointing => "checkpointing",
            Self::Restoring => "restoring",
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
    /// Save memory and devices, end the VMM.
    Pause,
    /// Bring a paused VM back from its saved state.
    Resume,
    /// Save disk and memory while the VM keeps running.
    Checkpoint,
    /// Return the VM to a checkpoint.
    Restore,
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
            Self::Stop => &[Running, Paused],
            Self::Died | Self::Pause | Self::Checkpoint => &[Running],
            Self::Resume => &[Paused],
            Self::Restore => &[Running, Paused, Stopped],
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
            Self::Pause => Some(VmState::Pausing),
            Self::Resume => Some(VmState::Resuming),
            Self::Checkpoint => Some(VmState::Checkpointing),
            Self::Restore => Some(VmState::Restoring),
            Self::Launched | Self::Died | Self::Resize => None,
        }
    }

    /// Where it ends; `None` when the VM is gone.
    pub fn to(self) -> Option<VmState> {
        match self {
            Self::Launched | Self::Start | Self::Resume => Some(VmState::Running),
            Self::Checkpoint | Self::Restore => Some(VmState::Running),
            Self::Stop | Self::Died | Self::Resize => Some(VmState::Stopped),
            Self::Pause => Some(VmState::Paused),
            Self::Destroy => None,
        }
    }

    /// Where a failure once under way leaves the VM, with what the
    /// operation did undone: the state it can start again from (a failed
    /// start or restore leaves it stopped, a failed pause or checkpoint
    /// running, a failed resume paused with its saved state, a failed
    /// resize stopped as it was), or, for a destroy, `destroying` again, to
    /// be tried again. `None`: the VM is gone (a failed create is undone),
    /// or the transition does not fail once under way (a stop kills the
    /// VMM at its deadline; `died` is only recorded).
    pub fn failed(self) -> Option<VmState> {
        match self {
            Self::Start | Self::Restore | Self::Resize => Some(VmState::Stopped),
            Self::Pause | Self::Checkpoint => Some(VmState::Running),
            Self::Resume => Some(VmState::Paused),
            Self::Destroy => Some(VmState::Destroying),
            Self::Launched | Self::Stop | Self::Died => None,
        }
    }

    /// What the user asked, in a word, for error messages ("pause of VM
    /// web failed").
    pub fn verb(self) -> &'static str {
        match self {
            Self::Launched => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Died => "refresh",
            Self::Destroy => "destroy",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Checkpoint => "checkpoint",
            Self::Restore => "restore",
            Self::Resize => "resize",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Self::Launched => "finish creating it",
            Self::Start => "start it",
            Self::Stop => "stop it",
            Self::Died => "mark it stopped",
            Self::Destroy => "destroy it",
            Self::Pause => "pause it",
            Self::Resume => "resume it",
            Self::Checkpoint => "checkpoint it",
            Self::Restore => "restore it",
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
            [VmState::Running, VmState::Paused] => "running or paused",
            [VmState::Running, VmState::Paused, VmState::Stopped] => "running, paused or stopped",
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
    !matches!(state, VmState::Stopped | VmState::Paused)
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
    /// A VMM runs, possibly with its vCPUs stopped (a pause, resume,
    /// checkpoint or restore was under way): adopt it as running and let
    /// its guest continue. Its saved memory state, if any, is stale.
    AdoptContinue,
    /// No VMM, and a complete saved memory state exists: the VM is paused
    /// (a pause that saved, or a resume that had not launched).
    MarkPaused,
}

impl Recovery {
    /// The state a record converges to; `None` where it keeps its own
    /// (`Keep`) or the VM goes (`UndoCreate`, `FinishDestroy`).
    pub fn to(self) -> Option<VmState> {
        match self {
            Self::Adopt | Self::AdoptContinue => Some(VmState::Running),
            Self::MarkStopped => Some(VmState::Stopped),
            Self::MarkPaused => Some(VmState::Paused),
            Self::Keep | Self::UndoCreate | Self::FinishDestroy => None,
        }
    }
}

/// The recovery table: a record converges to the host's truth. `saved`
/// says whether a complete memory state (`<id>/paused/`) exists.
pub fn recover(state: VmState, vmm_alive: bool, saved: bool) -> Recovery {
    use Recovery::*;
    use VmState::*;
    match (state, vmm_alive) {
        (Destroying, _) => FinishDestroy,
        (Creating, false) => UndoCreate,
        (Running, true) => Keep,
        (Creating | Starting | Stopping | Stopped, true) => Adopt,
        (Pausing | Paused | Resuming | Checkpointing | Restoring, true) => AdoptContinue,
        (Starting | Running | Stopping | Checkpointing | Restoring, false) => MarkStopped,
        (Stopped, false) => Keep,
        (Paused, false) if saved => Keep,
        (Pausing | Resuming, false) if saved => MarkPaused,
        (Pausing | Paused | Resuming, false) => MarkStopped,
    }
}

/// Whether a VM in this state keeps its saved memory state (`paused/`).
pub fn keeps_saved_state(state: VmState) -> bool {
    matches!(
        state,
        VmState::Pausing | VmState::Paused | VmState::Resuming
    )
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
        assert_eq!((e.wanted, e.action), ("running or paused", "stop it"));
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
            for saved in [false, true] {
                let live = recover(s, true, saved);
                assert!(
                    matches!(
                        live,
                        Recovery::Keep
                            | Recovery::Adopt
                            | Recovery::AdoptContinue
                            | Recovery::FinishDestroy
                    ),
                    "{s:?} with a live VMM: {live:?}"
                );
                let dead = recover(s, false, saved);
                assert!(
                    !matches!(dead, Recovery::Adopt | Recovery::AdoptContinue),
                    "{s:?} without a VMM"
                );
                if s == VmState::Running {
                    assert_eq!(dead, Recovery::MarkStopped);
                }
                // A saved state is only ever trusted where it was made for.
                if dead == Recovery::MarkPaused || (dead == Recovery::Keep && s == VmState::Paused)
                {
                    assert!(saved && keeps_saved_state(s), "{s:?}");
                }
            }
        }
        assert_eq!(
            recover(VmState::Creating, false, false),
            Recovery::UndoCreate
        );
        assert_eq!(recover(VmState::Stopped, true, false), Recovery::Adopt);
    }

    #[test]
    fn a_crash_mid_pause_or_resume_loses_nothing() {
        use VmState::*;
        // Saved and the VMM gone: paused (resume may be retried).
        assert_eq!(recover(Pausing, false, true), Recovery::MarkPaused);
        assert_eq!(recover(Resuming, false, true), Recovery::MarkPaused);
        assert_eq!(recover(Paused, false, true), Recovery::Keep);
        // The VMM still runs: the guest goes on as it was.
        assert_eq!(recover(Pausing, true, false), Recovery::AdoptContinue);
        assert_eq!(recover(Resuming, true, true), Recovery::AdoptContinue);
        assert_eq!(recover(Checkpointing, true, false), Recovery::AdoptContinue);
        assert_eq!(recover(Restoring, false, false), Recovery::MarkStopped);
        assert!(Transition::Pause.check(Running).is_ok());
        assert!(Transition::Resume.check(Paused).is_ok());
        assert!(Transition::Stop.check(Paused).is_ok());
        assert!(Transition::Pause.check(Stopped).is_err());
        assert!(Transition::Restore.check(Stopped).is_ok());
        assert!(Transition::Checkpoint.check(Paused).is_err());
        assert_eq!(Transition::Pause.to(), Some(Paused));
        assert!(!has_vmm(Paused));
    }

    #[test]
    fn a_failed_transition_leaves_a_state_it_can_start_from_and_recovery_keeps() {
        use Transition::*;
        for t in [
            Launched, Start, Stop, Died, Destroy, Pause, Resume, Checkpoint, Restore, Resize,
        ] {
            let Some(s) = t.failed() else { continue };
            assert!(
                t.from().contains(&s) || Some(s) == t.during(),
                "{t:?} fails to {s:?}"
            );
            if s == VmState::Destroying {
                continue;
            }
            // The host after the failure: a VMM exactly where the state
            // says, a saved state exactly where it keeps one.
            assert_eq!(
                recover(s, has_vmm(s), keeps_saved_state(s)),
                Recovery::Keep,
                "{t:?} fails to {s:?}"
            );
        }
        assert_eq!(Resume.failed(), Some(VmState::Paused));
        assert_eq!(Restore.failed(), Some(VmState::Stopped));
        assert_eq!(Pause.failed(), Some(VmState::Running));
        assert_eq!(Launched.failed(), None);
    }

    #[test]
    fn recovery_converges_to_the_state_its_name_says() {
        for s in VmState::ALL {
            for alive in [false, true] {
                for saved in [false, true] {
                    let r = recover(s, alive, saved);
                    if let Some(to) = r.to() {
                        assert_eq!(has_vmm(to), alive, "{s:?} {alive} {saved}: {r:?}");
                    }
                }
            }
        }
        assert_eq!(Recovery::MarkPaused.to(), Some(VmState::Paused));
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
