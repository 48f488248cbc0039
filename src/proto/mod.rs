//! Wire types shared by server, agent, guest and CLI. Serde only: no axum, rusqlite or tokio here.

pub mod agent;
pub mod api;
pub mod e2b;
pub mod guest;
pub mod invalid;
pub mod json;
pub mod keys;
pub mod net;
pub mod path;
pub mod quota;
pub mod sessions;
pub mod teams;
pub mod validate;
pub mod vocab;
