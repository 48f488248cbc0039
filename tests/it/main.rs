//! The integration suite: real server, real agents, real SQLite files and real microVMs.

mod accounts;
mod agent_calls;
mod api;
mod authz;
mod common;
mod e2b;
mod e2e;
mod fleet;
mod guest_errors;
mod harness;
mod isolation;
mod layout;
mod limits;
mod oauth;
mod openapi_fuzz;
mod ops;
mod quotas;
mod sandboxes;
mod sessions;
mod signup;
mod snapshots;
mod spec_agreement;
mod streams;
mod vm;
mod web;
