//! fcm: a Firecracker microVM manager. One binary: `fcm daemon` owns the
//! VMs (HTTP API, terminal stream), every other command is a client.
//!
//! The tree is the architecture (ARCHITECTURE.md has the map):
//! - `client`: the `fcm` commands, the API client, the console;
//! - `daemon`: the HTTP API, the VM manager and lifecycle, sessions, the
//!   terminal-stream server;
//! - `host`: what is done to the machine: programs, network, disks, VMMs,
//!   Caddy, SSH keys;
//! - `wire`: the types client and daemon exchange;
//! - `cli`, `config`, `names`, `error`: the command line, the daemon's
//!   configuration, validated names, error display.
//!
//! Allowed imports: `client` → `wire`, `host`, shared; `daemon` → `wire`,
//! `host`, shared; `host` → shared only; `wire` → nothing of fcm
//! (tests/layout.rs checks it).

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod host;
pub mod names;
pub mod wire;
