//! sandboxctl: self-hosted microVM sandboxes across your own Linux hosts, from one binary.
//!
//! The roles live side by side: [`server`] (REST API, scheduler, monitor, SQLite), [`agent`] (runs
//! microVMs on a host), [`guest`] (PID 1's helper inside each microVM) and [`cli`] (the client).
//! [`proto`] holds the wire types they share.
//!
//! Where the roles are put together: `main.rs` and the clap tree in [`cli`], [`local`] (a server
//! with its own agent on one machine) and [`bench`] (server, agent and bare QEMU side by side).

pub mod agent;
pub mod bench;
pub mod cli;
pub mod crypto;
pub mod fsutil;
pub mod guest;
pub mod ids;
pub mod local;
pub mod prom;
pub mod proto;
pub mod server;
pub mod settings;
pub mod time;
pub mod tls;
pub mod urlencode;
