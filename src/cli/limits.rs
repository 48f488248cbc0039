//! The server's limit flags (`sandboxctl server --header-read-timeout …`), parsed into values
//! that `main.rs` turns into the server's `ServerLimits`.

use std::time::Duration;

use clap::Args;

use crate::proto::net::Cidr;
use crate::settings::parse_duration;

/// The server's protections against slow and abusive clients, and its shutdown deadline.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// A client must send a request's headers within this (also how long an idle keep-alive
    /// connection stays open).
    #[arg(long, env = "SANDBOXCTL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A client must send a request body within this (file uploads and imports: with no gap
    /// longer than this).
    #[arg(long, env = "SANDBOXCTL_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Client connections served at once; more wait until one closes.
    #[arg(long, env = "SANDBOXCTL_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// An exec stream with no message either way for this long is closed.
    #[arg(long, env = "SANDBOXCTL_STREAM_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,
    /// Exec streams one user (with their API keys) may hold open at once.
    #[arg(long, env = "SANDBOXCTL_MAX_STREAMS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_user: u32,
    /// Password hashes computed at once (19 MiB of memory each; default: the CPU count, at most 8).
    #[arg(long, env = "SANDBOXCTL_MAX_CONCURRENT_HASHES", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_concurrent_hashes: Option<u32>,
    /// A reverse proxy (address or CIDR; repeat or separate with commas) whose X-Forwarded-For
    /// names the client for rate limits and lockouts. Other peers' X-Forwarded-For is ignored.
    #[arg(long, env = "SANDBOXCTL_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxy: Vec<Cidr>,
    /// On SIGTERM, how long calls in flight (uploads too) may take before they are cut.
    #[arg(long, env = "SANDBOXCTL_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s).map_err(|e| format!("'{s}': {e}"))
}
