//! sandboxctl: self-hosted microVM sandboxes across your own Linux hosts, from one binary.
//!
//! The roles live side by side: [`server`] (REST API, scheduler, monitor, SQLite), [`agent`] (runs
//! microVMs on a host), [`guest`] (PID 1's helper inside each microVM) and [`cli`] (the client).
//! [`proto`] holds the wire types they share.

pub mod agent;
pub mod cli;
pub mod crypto;
pub mod fsutil;
pub mod guest;
pub mod ids;
pub mod proto;
pub mod server;
pub mod settings;
pub mod time;
pub mod urlencode;
