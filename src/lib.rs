//! fcm: a Firecracker microVM manager. One binary: `fcm daemon` owns the
//! VMs (HTTP API, terminal stream), every other command is a client.
//! See ARCHITECTURE.md for the map.

pub mod caddy;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod disk;
pub mod firewall;
pub mod host;
pub mod names;
pub mod network;
pub mod sessions;
pub mod ssh;
pub mod store;
pub mod stream;
pub mod vmm;
