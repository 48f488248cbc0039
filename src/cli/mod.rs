//! The clap tree and the client: [`client`] (the typed REST client), [`commands`] (what each
//! command does), [`config`] (the stored login) and [`stream`] (interactive exec). This file is a
//! composition point: the flags here build each role's settings (the agent's VM, network and
//! import limits), so it alone in `cli` may name another role's types; the client and commands
//! speak only `proto`.

pub mod client;
pub mod commands;
pub mod config;
pub mod limits;
mod sandbox_args;
pub mod stream;

pub use sandbox_args::{FilesCommand, SandboxCommand};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::settings::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "sandboxctl",
    version,
    about = "Self-hosted microVM sandboxes across your own Linux hosts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// For development only: pieces of the guest program run on their own.
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Serve envd (the E2B in-sandbox API, normally inside every VM on port 49983) on this
    /// machine, to try an E2B SDK against it (`E2B_DEBUG=true E2B_SANDBOX_URL=http://ADDR`).
    /// Commands run on this machine as the requested user. An access token, if wanted, comes
    /// from SANDBOXCTL_ENVD_TOKEN.
    Envd {
        /// Address to listen on.
        #[arg(
            long,
            default_value = "127.0.0.1:49983",
            env = "SANDBOXCTL_ENVD_LISTEN"
        )]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (REST API, scheduler, host monitor), or back up and restore its
    /// database.
    #[command(args_conflicts_with_subcommands = true)]
    Server(Box<ServerArgs>),
    /// Run or register a host agent.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The program inside every microVM (started by the guest's init; not for people).
    #[command(hide = true, args_conflicts_with_subcommands = true)]
    Guest {
        /// The virtio-serial port to serve.
        #[arg(long, default_value = "/dev/vport0p1")]
        port: PathBuf,
        #[command(subcommand)]
        dev: Option<GuestCommand>,
    },
    /// Create an account (the first account on a server becomes its admin) and log in.
    Signup(SignupArgs),
    /// Log in and remember the server and token in the config file.
    Login(LoginArgs),
    /// End the session on the server and forget the stored token.
    Logout,
    /// Change your password: reads the current one, then the new one, a line each from standard
    /// input (prompting without echo on a terminal). Your other sessions are signed out.
    Password,
    /// Show who you are logged in as.
    Whoami(JsonFlag),
    /// Create, inspect, use and delete sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Manage the host fleet.
    #[command(subcommand)]
    Host(HostCommand),
    /// Manage the team's API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Teams and their members.
    #[command(subcommand)]
    Team(TeamCommand),
    /// Templates sandboxes start from.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Print a shell completion script, e.g. `sandboxctl completion bash > /etc/bash_completion.d/sandboxctl`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure a live server with a local agent and write a markdown table (`bench server`: the
    /// control plane alone against a simulated fleet).
    #[command(args_conflicts_with_subcommands = true)]
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: Option<BenchCommand>,
    /// Sequential creates (and other repetitions) to measure.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Creates to run at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// The markdown file to write (the generated section is replaced).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    #[arg(long, default_value = "minimal")]
    pub template: String,
    /// The local agent's data dir, for the bare-QEMU baseline and memory figures.
    #[arg(long, env = "SANDBOXCTL_AGENT_DATA_DIR")]
    pub agent_data_dir: Option<PathBuf>,
    #[arg(
        long,
        env = "SANDBOXCTL_KERNEL_DIR",
        default_value = "/var/lib/sandboxctl/kernel"
    )]
    pub kernel_dir: PathBuf,
    /// Instead of the create/exec/pause table: start idle sandboxes until N (or the first
    /// failure) and measure memory, idle CPU and exec round trip per sandbox at 1, 10, 50 and N
    /// (section `bench-density`); every sandbox made is deleted again.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub density: Option<u32>,
    /// Guest memory of each density sandbox, in MB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=65_536))]
    pub density_memory_mb: u32,
    /// How long the idle CPU of the density sandboxes is sampled at each step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub density_quiet: Duration,
    /// Exec round trips measured at each density step.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub density_execs: u32,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Start a server (this program, on an ephemeral port with a temporary data dir) with a fleet
    /// of simulated hosts and sandboxes, load it with sandbox GETs and lists at a fixed rate, and
    /// write latency, errors, CPU and memory as a markdown table (section `bench-server`).
    Server {
        /// Simulated hosts (registered, heartbeating and refreshing over the real API).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
        hosts: u32,
        /// Sandboxes created (through the API) before the load.
        #[arg(long, default_value_t = 10_000)]
        sandboxes: usize,
        /// Teams the sandboxes belong to, each with its API key.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        teams: u32,
        /// Requests a second (sandbox GETs and lists), sent on schedule.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// How long the load runs, in seconds.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        duration: u64,
        /// The share of requests that list the team's sandboxes (the rest GET one).
        #[arg(long, default_value_t = 0.1)]
        list_share: f64,
        /// One in this many seeded sandboxes is deleted again, so lists carry history (0: none).
        #[arg(long, default_value_t = 5)]
        delete_every: usize,
        /// How often each simulated host heartbeats.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        heartbeat_interval: Duration,
        /// The markdown file to write (the generated section is replaced).
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for crate::agent::vm::AccelChoice {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Auto => Self::Auto,
            AccelArg::Kvm => Self::Kvm,
            AccelArg::Tcg => Self::Tcg,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub action: Option<ServerCommand>,
    /// Address for the API and dashboard.
    #[arg(long, env = "SANDBOXCTL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the database and keys live.
    #[arg(
        long,
        env = "SANDBOXCTL_DATA_DIR",
        default_value = "/var/lib/sandboxctl"
    )]
    pub data_dir: PathBuf,
    /// The URL agents and users reach this server at (default: http://LISTEN).
    #[arg(long, env = "SANDBOXCTL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Also run an agent for this machine, registered automatically.
    #[arg(long, env = "SANDBOXCTL_LOCAL_AGENT")]
    pub local_agent: bool,
    /// Where the local agent listens.
    #[arg(
        long,
        env = "SANDBOXCTL_LOCAL_AGENT_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub local_agent_listen: String,
    /// Largest file a sandbox file upload may carry, in bytes.
    #[arg(long, env = "SANDBOXCTL_MAX_FILE_BYTES", default_value_t = 1 << 30)]
    pub max_file_bytes: u64,
    /// Accept BYOC agents that advertise loopback, link-local or private addresses (refused by
    /// default: a team's host must not point the server at its own network). For tests and
    /// single-machine setups.
    #[arg(long, env = "SANDBOXCTL_ALLOW_PRIVATE_AGENT_ADDRESSES")]
    pub allow_private_agent_addresses: bool,
    /// Who may sign up: `invite` (with a team invite), `open` (anyone) or `closed` (no one). The
    /// first account of a fresh server signs up in every mode and becomes the platform admin.
    #[arg(long, env = "SANDBOXCTL_SIGNUP", default_value = "invite")]
    pub signup: crate::proto::vocab::SignupMode,
    /// The first account needs the bootstrap token the server prints even from this machine: set
    /// it when a reverse proxy on this machine makes every client look local.
    #[arg(long, env = "SANDBOXCTL_BOOTSTRAP_REQUIRES_TOKEN")]
    pub bootstrap_requires_token: bool,
    /// Every team's quota of running sandboxes, vCPUs and memory, e.g.
    /// `sandboxes=10,vcpus=16,memory_mb=16384` (any subset; unlimited by default). A platform
    /// admin can set a team's own with `sandboxctl team quota --set`.
    #[arg(long, env = "SANDBOXCTL_TEAM_QUOTA", default_value = "", value_parser = crate::proto::quota::TeamQuota::parse)]
    pub team_quota: crate::proto::quota::TeamQuota,
    /// Requests for `{port}-{sandbox_id}.DOMAIN` go to that port of that sandbox (point a
    /// wildcard DNS record `*.DOMAIN` at this server; with TLS, a wildcard certificate).
    #[arg(long, env = "SANDBOXCTL_SANDBOX_DOMAIN", value_parser = crate::settings::parse_domain)]
    pub sandbox_domain: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, env = "SANDBOXCTL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; with --tls-cert).
    #[arg(long, env = "SANDBOXCTL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS on this address and keep --listen plain HTTP (e.g. HTTPS on :443 for
    /// browsers and SDKs, plain HTTP on a private address for agents). Default: HTTPS on --listen.
    #[arg(long, env = "SANDBOXCTL_TLS_LISTEN", requires = "tls_cert")]
    pub tls_listen: Option<SocketAddr>,
    /// How many vCPUs the scheduler places on a host per CPU core (idle sandboxes use little
    /// CPU; memory is usually the real limit). 1 to 256.
    #[arg(long, env = "SANDBOXCTL_VCPU_OVERCOMMIT", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub vcpu_overcommit: u32,
    /// How much sandbox memory the scheduler promises a host, in percent of the host's memory
    /// (100: never more than it has; above, idle sandboxes from one template share most of their
    /// pages, but a host whose sandboxes touch all their RAM runs out). 100 to 1000.
    #[arg(long, env = "SANDBOXCTL_MEMORY_OVERCOMMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(100..=1000))]
    pub memory_overcommit: u32,
    /// The admin account created on a fresh server with --local-agent.
    #[arg(
        long,
        env = "SANDBOXCTL_ADMIN_EMAIL",
        default_value = "admin@sandboxctl.local"
    )]
    pub admin_email: String,
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    #[command(flatten)]
    pub github: GithubArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub metrics: MetricsTokenArgs,
}

#[derive(Debug, Args)]
pub struct MetricsTokenArgs {
    /// A file holding the token scrapers send (`Authorization: Bearer TOKEN`) to read /metrics
    /// (the token itself may come in SANDBOXCTL_METRICS_TOKEN instead). On the server, platform
    /// admins' tokens read /metrics too.
    #[arg(long, env = "SANDBOXCTL_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

impl MetricsTokenArgs {
    /// The token from the file or from SANDBOXCTL_METRICS_TOKEN, if any.
    pub fn token(&self) -> anyhow::Result<Option<crate::crypto::Secret>> {
        crate::prom::read_token(
            self.metrics_token_file.as_deref(),
            "SANDBOXCTL_METRICS_TOKEN",
        )
    }
}

/// The server's data dir, for its maintenance commands.
#[derive(Debug, Args)]
pub struct ServerDataDir {
    /// The server's data dir.
    #[arg(
        long,
        env = "SANDBOXCTL_DATA_DIR",
        default_value = "/var/lib/sandboxctl"
    )]
    pub data_dir: PathBuf,
}

/// The server's maintenance commands (without one, `server` runs the server).
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Copy the database to a file while the server may be running (SQLite's online backup).
    /// Keep jwt.key and agent-signing.key from the data dir with it.
    Backup {
        #[command(flatten)]
        dir: ServerDataDir,
        /// The backup file to write.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup in place of the database; the server must be stopped. The database that was
    /// there is kept beside it as sandboxctl.db.before-restore-<time>.
    Restore {
        #[command(flatten)]
        dir: ServerDataDir,
        /// The backup file (from `sandboxctl server backup`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

/// How the server and agent write their logs (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line (timestamp, level, message, fields, target), for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log lines as text or as JSON objects.
    #[arg(long, env = "SANDBOXCTL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct GithubArgs {
    /// GitHub OAuth app client id: enables "Log in with GitHub".
    #[arg(long, env = "SANDBOXCTL_GITHUB_CLIENT_ID")]
    pub github_client_id: Option<String>,
    /// A file holding the OAuth app's client secret.
    #[arg(long, env = "SANDBOXCTL_GITHUB_CLIENT_SECRET_FILE")]
    pub github_client_secret_file: Option<PathBuf>,
    /// GitHub's web address (change only for GitHub Enterprise or tests).
    #[arg(
        long,
        env = "SANDBOXCTL_GITHUB_URL",
        default_value = "https://github.com"
    )]
    pub github_url: String,
    /// GitHub's API address.
    #[arg(
        long,
        env = "SANDBOXCTL_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// The guest kernel (vmlinuz, modules/) that install.sh fetched.
    #[arg(
        long,
        env = "SANDBOXCTL_KERNEL_DIR",
        default_value = "/var/lib/sandboxctl/kernel"
    )]
    pub kernel_dir: PathBuf,
    /// Hardware acceleration: auto uses KVM only where it really works.
    #[arg(long, env = "SANDBOXCTL_ACCEL", value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Where each VM gets a cgroup of its own (cgroup v2): auto (`sandboxctl` at the top of the
    /// cgroup2 mount), off, or an absolute path inside the mount (a delegated folder).
    #[arg(long, env = "SANDBOXCTL_CGROUP_ROOT", default_value = "auto")]
    pub cgroup_root: crate::agent::vm::cgroup::CgroupChoice,
    /// Cold boots at once on this host (0: one per core); more wait their turn.
    #[arg(long, env = "SANDBOXCTL_MAX_CONCURRENT_BOOTS", default_value_t = 0)]
    pub max_concurrent_boots: usize,
    /// Addresses sandboxes' network namespaces are masqueraded to (a /30 each).
    #[arg(long, env = "SANDBOXCTL_NETWORK_POOL", default_value = crate::agent::net::DEFAULT_POOL, value_parser = parse_cidr)]
    pub network_pool: crate::proto::net::Cidr,
    /// The resolver sandboxes' DNS queries are forwarded to (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long, env = "SANDBOXCTL_SANDBOX_DNS")]
    pub sandbox_dns: Option<std::net::IpAddr>,
    /// A network every sandbox may reach even where the default policy closes it (repeatable).
    #[arg(long, env = "SANDBOXCTL_EGRESS_ALLOW", value_delimiter = ',', value_parser = parse_cidr)]
    pub egress_allow: Vec<crate::proto::net::Cidr>,
    /// A network no sandbox may reach, whatever its policy (repeatable).
    #[arg(long, env = "SANDBOXCTL_EGRESS_DENY", value_delimiter = ',', value_parser = parse_cidr)]
    pub egress_deny: Vec<crate::proto::net::Cidr>,
    /// QEMU runs unprivileged: template boots as this uid, each VM as one above it.
    #[arg(long, env = "SANDBOXCTL_VM_UID_BASE", default_value_t = crate::agent::vm::DEFAULT_UID_BASE)]
    pub vm_uid_base: u32,
    /// Largest a template import's archive may expand to on this host, in bytes (file data,
    /// link targets and 512 per member); more is refused with 413.
    #[arg(long, env = "SANDBOXCTL_MAX_IMAGE_EXPANDED_BYTES", default_value_t = crate::agent::images::import::Limits::DEFAULT_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_expanded_bytes: u64,
    /// Most members (files, directories, links) a template import's archive may hold.
    #[arg(long, env = "SANDBOXCTL_MAX_IMAGE_MEMBERS", default_value_t = crate::agent::images::import::Limits::DEFAULT_MAX_MEMBERS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_members: u64,
    /// How often each running sandbox's CPU, memory and disk use is sampled (at least 1s); the
    /// last hour of samples is kept.
    #[arg(long, env = "SANDBOXCTL_SAMPLE_INTERVAL", default_value = "5s", value_parser = crate::settings::parse_sample_interval)]
    pub sample_interval: Duration,
    /// Keep N VMs of a template and shape restored and waiting, so that a create of that
    /// template and shape takes one (repeatable): TEMPLATE/SHAPE=N, SHAPE as boot snapshots name
    /// it (MEMORYm-VCPUSc-net or -nonet), e.g. `minimal/256m-1c-net=2`. Waiting VMs count in
    /// the host's used memory and vCPUs; they end with the agent.
    #[arg(long, env = "SANDBOXCTL_WARM_POOL", value_delimiter = ',')]
    pub warm_pool: Vec<crate::agent::vm::pool::WarmPoolSpec>,
    /// The warm pool is drained (its VMs ended) while the host's MemAvailable is under this many
    /// MB, and refilled only while a VM more leaves that much.
    #[arg(long, env = "SANDBOXCTL_WARM_POOL_MIN_AVAILABLE_MB", default_value_t = crate::agent::vm::pool::DEFAULT_MIN_AVAILABLE_MB)]
    pub warm_pool_min_available_mb: u64,
}

fn parse_quota_override(s: &str) -> Result<crate::proto::quota::TeamQuota, String> {
    if s.trim() == "default" {
        return Ok(Default::default());
    }
    crate::proto::quota::TeamQuota::parse(s)
}

fn parse_cidr(s: &str) -> Result<crate::proto::net::Cidr, String> {
    crate::proto::net::Cidr::parse(s)
}

impl VmArgs {
    pub fn net_config(&self) -> crate::agent::net::NetConfig {
        crate::agent::net::NetConfig {
            pool: self.network_pool,
            dns: self.sandbox_dns,
            operator: crate::agent::net::OperatorPolicy {
                allow: self.egress_allow.clone(),
                deny: self.egress_deny.clone(),
            },
        }
    }

    pub fn jail_config(&self) -> crate::agent::vm::JailConfig {
        crate::agent::vm::JailConfig {
            uid_base: self.vm_uid_base,
            hidden: Vec::new(),
        }
    }

    /// The import limits these flags set.
    pub fn import_limits(&self) -> crate::agent::images::import::Limits {
        crate::agent::images::import::Limits {
            max_bytes: self.max_image_expanded_bytes,
            max_members: self.max_image_members,
        }
    }

    /// The warm pool these flags set.
    pub fn warm_pool_config(&self) -> crate::agent::vm::pool::WarmPoolConfig {
        crate::agent::vm::pool::WarmPoolConfig {
            specs: self.warm_pool.clone(),
            min_available_mb: self.warm_pool_min_available_mb,
        }
    }
}

#[derive(Debug, Args)]
pub struct TimingArgs {
    /// How often agents send heartbeats.
    #[arg(long, env = "SANDBOXCTL_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// How often the host monitor runs.
    #[arg(long, env = "SANDBOXCTL_MONITOR_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub monitor_interval: Duration,
    /// A host with no heartbeat for this long becomes unreachable.
    #[arg(long, env = "SANDBOXCTL_HOST_STALE_AFTER", default_value = "90s", value_parser = parse_duration)]
    pub host_stale_after: Duration,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register this host with a one-time token; stores credentials and exits.
    Register {
        /// The server's URL.
        #[arg(long, env = "SANDBOXCTL_SERVER")]
        server: String,
        /// The registration token from `sandboxctl host create`.
        #[arg(long, env = "SANDBOXCTL_REGISTRATION_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(
            long,
            env = "SANDBOXCTL_DATA_DIR",
            default_value = "/var/lib/sandboxctl/agent"
        )]
        data_dir: PathBuf,
        /// Where the agent will listen.
        #[arg(
            long,
            env = "SANDBOXCTL_AGENT_LISTEN",
            default_value = "127.0.0.1:9090"
        )]
        listen: SocketAddr,
        /// The address the server should call (default: --listen).
        #[arg(long, env = "SANDBOXCTL_AGENT_ADVERTISE")]
        advertise: Option<String>,
    },
    /// Serve the server's calls and run microVMs.
    Run {
        #[arg(
            long,
            env = "SANDBOXCTL_DATA_DIR",
            default_value = "/var/lib/sandboxctl/agent"
        )]
        data_dir: PathBuf,
        /// Override the listen address stored at registration.
        #[arg(long, env = "SANDBOXCTL_AGENT_LISTEN")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        vm: VmArgs,
        /// How often to send heartbeats.
        #[arg(long, env = "SANDBOXCTL_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
        heartbeat_interval: Duration,
        /// On SIGTERM, how long calls in flight may take before they are cut (VMs keep running).
        #[arg(long, env = "SANDBOXCTL_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        shutdown_timeout: Duration,
        #[command(flatten)]
        log: LogArgs,
        /// Where to serve the agent's Prometheus metrics (`GET /metrics`), or `off`. An address
        /// off loopback needs --metrics-token-file.
        #[arg(long, env = "SANDBOXCTL_METRICS_LISTEN", default_value = crate::agent::prometheus::DEFAULT_LISTEN, value_parser = crate::settings::parse_optional_listen)]
        metrics_listen: crate::settings::OptionalListen,
        #[command(flatten)]
        metrics: MetricsTokenArgs,
    },
    /// Check what an agent would use on this machine (guest kernel, QEMU, accelerator, cgroups),
    /// trying each for real; exits 1 when something an agent needs does not work.
    Check {
        #[command(flatten)]
        vm: VmArgs,
        /// Only these parts (repeat the flag; all by default).
        #[arg(long, value_enum)]
        only: Vec<crate::agent::vm::check::CheckPart>,
    },
}

/// A sandbox's egress policy on the command line.
#[derive(Debug, Args)]
pub struct EgressArgs {
    /// Close the internet: only --allow-out networks stay reachable.
    #[arg(long)]
    pub no_internet: bool,
    /// A network the sandbox may reach even where the default policy closes it (repeatable).
    #[arg(long = "allow-out", value_name = "CIDR")]
    pub allow_out: Vec<String>,
    /// A network the sandbox may not reach (repeatable).
    #[arg(long = "deny-out", value_name = "CIDR")]
    pub deny_out: Vec<String>,
}

impl EgressArgs {
    pub fn policy(&self) -> crate::proto::net::EgressPolicy {
        crate::proto::net::EgressPolicy {
            internet: !self.no_internet,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SignupArgs {
    #[arg(long, env = "SANDBOXCTL_SERVER")]
    pub server: String,
    #[arg(long)]
    pub email: String,
    #[arg(long)]
    pub name: String,
    /// Read the password from standard input (else SANDBOXCTL_PASSWORD).
    #[arg(long)]
    pub password_stdin: bool,
    /// A team invite (its link or token): you join that team.
    #[arg(long, env = "SANDBOXCTL_INVITE")]
    pub invite: Option<String>,
    /// For the first account of a fresh server from another machine: the file holding the
    /// bootstrap token the server printed (DATA_DIR/bootstrap-token).
    #[arg(long, value_name = "FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(long, env = "SANDBOXCTL_SERVER")]
    pub server: String,
    #[arg(long)]
    pub email: String,
    /// Read the password from standard input (else SANDBOXCTL_PASSWORD).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add a host; prints the command to run on it.
    Create {
        /// regular (platform admins) or byoc (your team's own machine).
        #[arg(long = "type", default_value = "regular")]
        host_type: String,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// A fresh registration token for a host that has not registered yet.
    Token {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a host's tags.
    Tag {
        id: String,
        /// The tags (none clears them).
        tags: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop placing new sandboxes on a host (its sandboxes keep running).
    Drain {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Put a draining host back online.
    Undrain {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a host; refuses while it runs sandboxes unless --force.
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key (shown once).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Your teams, with your role.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a team (you become its owner).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Work in another of your teams from now on.
    Switch { team: String },
    /// The members of a team (default: the current one).
    Members {
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make an invite link (one use, 7 days) that adds whoever accepts it to the team.
    Invite {
        /// The role it gives: admin or member.
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The team's pending invites.
    Invites {
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a pending invite.
    RevokeInvite {
        invite_id: String,
        #[arg(long)]
        team: Option<String>,
    },
    /// Join a team with an invite (its link or token).
    Join { invite: String },
    /// Remove a member.
    Remove {
        user_id: String,
        #[arg(long)]
        team: Option<String>,
    },
    /// Change a member's role (admin or member).
    Role {
        user_id: String,
        role: String,
        #[arg(long)]
        team: Option<String>,
    },
    /// Rename a team.
    Rename {
        name: String,
        #[arg(long)]
        team: Option<String>,
    },
    /// Leave a team.
    Leave { team: String },
    /// A team's quota (running sandboxes, vCPUs, memory) and what it uses; a platform admin can
    /// set it with `--set sandboxes=N,vcpus=N,memory_mb=N` (left-out limits follow the server's
    /// default; `--set default` drops the team's own).
    Quota {
        #[arg(long)]
        team: Option<String>,
        #[arg(long, value_name = "LIMITS", value_parser = parse_quota_override)]
        set: Option<crate::proto::quota::TeamQuota>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a team (owner only): its sandboxes are destroyed first.
    Delete {
        team: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Base templates (and on how many hosts) and your team's snapshots.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Build a base template (`debian`) on every host (platform admins), showing progress.
    Build {
        name: String,
        /// Return at once instead of following the build.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a team template from your own root filesystem: a tar archive (`.tar`, `.tar.gz`;
    /// `docker export` makes one) or a directory, sent as a tar stream.
    Import {
        name: String,
        /// The archive or directory.
        #[arg(long)]
        from: PathBuf,
        /// Replace the team's template of that name.
        #[arg(long)]
        overwrite: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete one of your team's templates (by id or name).
    Delete { id: String },
}
