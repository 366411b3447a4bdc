//! What a manager operation fails with: [`ManagerError`], its kinds and
//! the hint each gives the user. The HTTP status of each is
//! `api::status`'s.

use std::path::PathBuf;

use thiserror::Error;

use super::{Cause, images};
use crate::daemon::guest::GuestError;
use crate::names::NameError;

#[derive(Debug, Error)]
pub enum ManagerError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("no VM named or with id {0:?}")]
    NotFound(String),
    #[error("{0:?} is ambiguous: it is the name of one VM and the id of another; use the id")]
    Ambiguous(String),
    #[error("VM {name} is {state}; it must be {wanted} to {action}")]
    WrongState {
        name: String,
        state: &'static str,
        wanted: &'static str,
        action: &'static str,
    },
    #[error("a VM named {0} already exists")]
    NameTaken(String),
    /// In a cluster, a new VM's name cannot be claimed while etcd is out of reach.
    #[error("the cluster is unreachable, so the name {name} cannot be claimed: {why}")]
    ClusterUnreachable { name: String, why: String },
    #[error("the daemon's limit of {0} VMs is reached")]
    TooManyVms(u32),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("{what} not found at {path}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("no free IP address in the pool {0}")]
    PoolExhausted(String),
    /// A step of a create failed (and the create was undone).
    #[error("create failed at step \"{step}\"")]
    CreateStep {
        step: &'static str,
        #[source]
        cause: Box<Cause>,
    },
    /// An operation on a VM failed; the VM is left as its transition says
    /// (`Transition::failed`).
    #[error("{action} of VM {name} failed")]
    Operation {
        action: &'static str,
        name: String,
        #[source]
        cause: Box<Cause>,
    },
    #[error("VM directory {id} has no valid record ({reason})")]
    Broken { id: String, reason: String },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("VM {0} is still being recovered after the daemon's restart")]
    Recovering(String),
    #[error("VM {vm} has no checkpoint {checkpoint:?}")]
    CheckpointNotFound { vm: String, checkpoint: String },
    #[error("VM {vm} already has a checkpoint named {name}")]
    CheckpointExists { vm: String, name: String },
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("VM {name} cannot be forked: {why}")]
    NotForkable { name: String, why: &'static str },
    #[error("no image named {0:?}")]
    ImageNotFound(String),
    /// The name of the built-in base image, for something it cannot be.
    #[error("{0}")]
    BaseImage(String),
    #[error("image {name} is in use by VM{} {}", if vms.len() == 1 { "" } else { "s" }, vms.join(", "))]
    ImageInUse { name: String, vms: Vec<String> },
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Image(Box<crate::host::image::ImageError>),
    #[error(
        "VM {name} has no tmux in its image {image}: fcm console and sessions need tmux in the image"
    )]
    NoTmux { name: String, image: String },
    #[error("VM {name} has no sshd in its image {image}: fcm ssh needs sshd in the image")]
    NoSshd { name: String, image: String },
}

impl ManagerError {
    /// What the user should do next, naming the VM where that helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Missing { hint, .. } => Some((*hint).into()),
            Self::NotFound(_) => Some("list VMs with: fcm ls".into()),
            Self::CheckpointNotFound { vm, .. } => {
                Some(format!("list its checkpoints with: fcm checkpoints {vm}"))
            }
            Self::WrongState {
                name,
                wanted: "running" | "running or paused",
                ..
            } => Some(format!("start it with: fcm start {name}")),
            Self::WrongState {
                name,
                wanted: "stopped",
                ..
            } => Some(format!("stop it first with: fcm stop {name}")),
            Self::WrongState {
                name,
                wanted: "paused",
                ..
            } => Some(format!("pause it first with: fcm pause {name}")),
            Self::Broken { id, .. } => Some(format!(
                "nothing can be done with it but remove it: fcm destroy {id}"
            )),
            Self::ShuttingDown => Some("try again once the daemon is back".into()),
            Self::ClusterUnreachable { .. } => Some(
                "names are unique across the cluster: try again once etcd answers (fcm hosts says whether it does)"
                    .into(),
            ),
            Self::Recovering(_) => Some(
                "the daemon brings every VM in line with the host after a restart; try again in a moment"
                    .into(),
            ),
            Self::Guest(e) => e.hint(),
            Self::CreateStep { cause, .. } | Self::Operation { cause, .. } => cause.hint(),
            Self::NotForkable { name, .. } => Some(format!(
                "a VM made before forks, or a fork, can be forked after a cold boot: \
                 fcm stop {name}; fcm start {name}"
            )),
            Self::ImageNotFound(_) => Some("list images with: fcm image ls".into()),
            Self::ImageInUse { vms, .. } => Some(format!(
                "destroy the VMs made from it first (fcm destroy {})",
                vms.join(" ")
            )),
            Self::NoSshd { name, .. } => Some(format!(
                "run a shell with: fcm exec -it {name} -- sh (or add sshd to the image, \
                 e.g. RUN apt-get install -y openssh-server)"
            )),
            Self::NoTmux { name, .. } => Some(format!(
                "run a shell with: fcm exec -it {name} -- sh (or add tmux to the image, \
                 e.g. RUN apt-get install -y tmux)"
            )),
            Self::Image(e) => images::image_hint(e),
            Self::TooManyVms(_) => Some(
                "destroy a VM (fcm ls, fcm destroy <vm>), or raise max_vms in the daemon config"
                    .into(),
            ),
            _ => None,
        }
    }
}
