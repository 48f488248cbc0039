//! The host agent: registers once, heartbeats, serves the server's calls and runs microVMs.

pub mod api;
pub mod credentials;
pub mod facts;
pub mod images;
pub mod net;
pub mod prometheus;
pub mod register;
pub mod run;
pub mod vm;
