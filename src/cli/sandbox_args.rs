//! The `sandbox` and `sandbox files` subcommands' flags (the client's side: they name only
//! `proto` and the commands' own parsers).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::EgressArgs;
use crate::settings::parse_duration;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Start a new sandbox and wait until it answers.
    Create {
        #[arg(long, default_value = "minimal")]
        template: String,
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MB.
        #[arg(long)]
        memory: Option<u32>,
        /// Idle timeout in seconds (0 = never).
        #[arg(long)]
        timeout: Option<u64>,
        /// What the timeout (and the deadline) does: pause (default) or kill.
        #[arg(long, value_parser = ["pause", "kill"])]
        on_timeout: Option<String>,
        /// An absolute deadline in seconds from now, whatever the activity (0 = none).
        #[arg(long)]
        end_in: Option<u64>,
        /// Environment variables, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Metadata, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// No network device at all.
        #[arg(long)]
        no_network: bool,
        #[command(flatten)]
        egress: EgressArgs,
        /// Its ports answer anyone who knows the address (default: only with the sandbox's
        /// access token or a credential of the team).
        #[arg(long)]
        public_ports: bool,
        #[arg(long)]
        json: bool,
    },
    /// Replace a sandbox's egress policy (what it may reach); applies at once.
    Network {
        id: String,
        #[command(flatten)]
        egress: EgressArgs,
        #[arg(long)]
        json: bool,
    },
    /// List the team's sandboxes.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command: its output streams as it comes, standard input is passed on when it is a
    /// pipe, Ctrl-C reaches the command, and the CLI exits with the command's exit code.
    Exec {
        id: String,
        /// Seconds before the command is killed.
        #[arg(long)]
        timeout: Option<u64>,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Run on a pseudo-terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// One-shot: wait and print {stdout, stderr, exit_code, duration_ms} as JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments (after --).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An interactive shell in the sandbox.
    Shell { id: String },
    /// Forward a local port to a TCP port inside the sandbox, through the server: listens on
    /// 127.0.0.1:LOCAL (LOCAL defaults to PORT; 0 picks a free one) until interrupted.
    PortForward {
        id: String,
        /// `PORT` or `LOCAL:PORT`.
        #[arg(value_name = "[LOCAL:]PORT", value_parser = crate::cli::commands::ports::parse_forward)]
        ports: (u16, u16),
    },
    /// Pause: memory and devices saved to disk, the VM process ended.
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused sandbox where it left off.
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Set (or extend, counting from now) the idle timeout; 0 = never.
    Timeout {
        id: String,
        seconds: u64,
        #[arg(long, value_parser = ["pause", "kill"])]
        on_timeout: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// CPU, memory and disk use, sampled every few seconds (the last hour is kept).
    Metrics {
        id: String,
        /// Keep printing new samples until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Samples from this far back (at most 1h are kept).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        since: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Set the absolute deadline, SECONDS from now (earlier or later; 0 removes it): then the
    /// sandbox is paused or killed as its on-timeout says, whatever its activity.
    Deadline {
        id: String,
        seconds: u64,
        #[arg(long)]
        json: bool,
    },
    /// The guest's console log (control characters escaped; `--raw` for the exact bytes).
    Logs {
        id: String,
        /// Print the log's exact bytes, terminal escapes included.
        #[arg(long)]
        raw: bool,
    },
    /// Keep the sandbox's memory and disk as a template of your team.
    Snapshot {
        id: String,
        /// The template's name.
        name: String,
        /// Replace an existing template of that name.
        #[arg(long)]
        overwrite: bool,
        #[arg(long)]
        json: bool,
    },
    /// Files inside a sandbox.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Stop and delete a sandbox.
    Kill {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Download a file (to stdout with `-`).
    Get {
        id: String,
        path: String,
        dest: PathBuf,
    },
    /// Upload a file (from stdin with `-`).
    Put {
        id: String,
        src: PathBuf,
        path: String,
    },
    /// List a directory (control characters in names escaped; `--raw` for the exact names).
    Ls {
        id: String,
        #[arg(default_value = "/")]
        path: String,
        #[arg(long)]
        json: bool,
        /// Print names exactly as they are, terminal escapes included.
        #[arg(long)]
        raw: bool,
    },
    /// Show one entry.
    Stat {
        id: String,
        path: String,
        #[arg(long)]
        json: bool,
        /// Print the path exactly as it is, terminal escapes included.
        #[arg(long)]
        raw: bool,
    },
    /// Make a directory.
    Mkdir {
        id: String,
        path: String,
        #[arg(long, short = 'p')]
        parents: bool,
    },
    /// Remove a file or (with -r) a directory tree.
    Rm {
        id: String,
        path: String,
        #[arg(long, short = 'r')]
        recursive: bool,
    },
}
