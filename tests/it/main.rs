//! The integration suite: real server, real agents, real SQLite files and real microVMs.

mod api;
mod common;
mod e2e;
mod vm;
