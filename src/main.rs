use clap::{CommandFactory, Parser};
use sandboxctl::agent;
use sandboxctl::cli::{
    AgentCommand, BenchCommand, Cli, Command, GuestCommand, LogFormat, ServerArgs, ServerCommand,
    ServerDataDir, commands,
};
use sandboxctl::local::{self, LocalAgentConfig};
use sandboxctl::server::{self, ServerConfig};

fn init_logs(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SANDBOXCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs.try_init(),
        // The event's fields (message included) at the top level of each object.
        LogFormat::Json => logs.json().flatten_event(true).try_init(),
    };
}

/// Large stream buffers (file transfers move megabytes through 1 MiB chunks) must go back to the
/// system when freed: a fixed mmap threshold stops glibc from raising it and keeping freed chunks in
/// per-thread arenas, which otherwise grows the resident memory of the server and agent by the
/// size of the files they relay. (musl, the static release build, maps such chunks on its own
/// and gives them back when freed: nothing to tune there.)
#[cfg(target_env = "gnu")]
fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_malloc() {}

fn main() {
    tune_malloc();
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        use std::io::Write;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "sandboxctl", &mut script);
        // A closed pipe (`| head`) is not an error worth a panic.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&script).and_then(|()| out.flush());
        return;
    }
    if let Command::Guest {
        dev: Some(GuestCommand::Envd { listen }),
        ..
    } = &cli.command
    {
        init_logs("info", LogFormat::Text);
        let token = std::env::var("SANDBOXCTL_ENVD_TOKEN").ok();
        if let Err(e) = sandboxctl::guest::envd::serve_dev(*listen, token) {
            eprintln!("sandboxctl guest envd: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Command::Guest { port, .. } = &cli.command {
        init_logs("info", LogFormat::Text);
        if let Err(e) = sandboxctl::guest::run(port) {
            eprintln!("sandboxctl guest: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxctl: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match dispatch(cli.command).await {
            Ok(code) => code,
            Err(e) => {
                // The message may carry a guest's or another user's words.
                let msg = format!("{e:#}");
                eprintln!("sandboxctl: {}", commands::terminal::text(&msg));
                1
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn dispatch(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Server(mut a) => match a.action.take() {
            Some(ServerCommand::Backup {
                dir: ServerDataDir { data_dir },
                to,
                force,
            }) => {
                let r = tokio::task::spawn_blocking(move || {
                    server::db::backup::backup(&data_dir, &to, force)
                })
                .await??;
                println!("{r}");
                Ok(0)
            }
            Some(ServerCommand::Restore {
                dir: ServerDataDir { data_dir },
                from,
            }) => {
                let r = tokio::task::spawn_blocking(move || {
                    server::db::backup::restore(&data_dir, &from)
                })
                .await??;
                println!("{r}");
                Ok(0)
            }
            None => run_server(a).await,
        },
        Command::Agent(AgentCommand::Register {
            server,
            token,
            data_dir,
            listen,
            advertise,
        }) => {
            init_logs("warn", LogFormat::Text);
            let advertise = advertise.unwrap_or_else(|| listen.to_string());
            let c = agent::register::register(
                &server,
                &token,
                &data_dir,
                &listen.to_string(),
                &advertise,
            )
            .await?;
            println!("registered as host {} with {}", c.host_id, c.server_url);
            println!(
                "credentials saved in {}",
                agent::credentials::path(&data_dir).display()
            );
            let unit = std::path::Path::new(agent::register::AGENT_UNIT_PATH);
            print!("{}", agent::register::next_step(&data_dir, unit.exists()));
            Ok(0)
        }
        Command::Agent(AgentCommand::Check { vm, only }) => {
            init_logs("warn", LogFormat::Text);
            let net = vm.net_config();
            let verdicts = agent::vm::check::check(&agent::vm::check::CheckConfig {
                net,
                kernel_dir: vm.kernel_dir,
                accel: vm.accel.into(),
                cgroup_root: vm.cgroup_root,
                vm_uid_base: vm.vm_uid_base,
                only,
            })
            .await;
            for v in &verdicts {
                println!("{v}");
            }
            Ok(if verdicts.iter().all(|v| v.ok) { 0 } else { 1 })
        }
        Command::Agent(AgentCommand::Run {
            data_dir,
            listen,
            vm,
            heartbeat_interval,
            shutdown_timeout,
            log,
            metrics_listen,
            metrics,
        }) => {
            init_logs("info", log.log_format);
            let metrics = agent::prometheus::MetricsConfig {
                listen: metrics_listen.0,
                token: metrics.token()?,
            };
            let (net, jail) = (vm.net_config(), vm.jail_config());
            let import_limits = vm.import_limits();
            let warm_pool = vm.warm_pool_config();
            agent::run::run(
                agent::run::AgentConfig {
                    data_dir,
                    kernel_dir: vm.kernel_dir,
                    listen: listen.map(|l| l.to_string()),
                    accel: vm.accel.into(),
                    cgroup_root: vm.cgroup_root.clone(),
                    max_concurrent_boots: vm.max_concurrent_boots,
                    import_limits,
                    heartbeat_interval,
                    sample_interval: vm.sample_interval,
                    warm_pool,
                    guest_binary: None,
                    net,
                    jail,
                    metrics,
                    shutdown_timeout,
                },
                async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("signal handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                    }
                },
            )
            .await?;
            Ok(0)
        }
        Command::Guest { .. } | Command::Completion { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Signup(a) => commands::signup(a).await,
        Command::Login(a) => commands::login(a).await,
        Command::Logout => commands::logout().await,
        Command::Password => commands::password().await,
        Command::Whoami(j) => commands::whoami(j.json).await,
        Command::Sandbox(c) => commands::sandbox(c).await,
        Command::Host(c) => commands::host(c).await,
        Command::Key(c) => commands::key(c).await,
        Command::Team(c) => commands::team(c).await,
        Command::Template(c) => commands::template(c).await,
        Command::Bench(a) => match a.action {
            Some(BenchCommand::Server {
                hosts,
                sandboxes,
                teams,
                rate,
                duration,
                list_share,
                delete_every,
                heartbeat_interval,
                out,
            }) => {
                init_logs("warn", LogFormat::Text);
                sandboxctl::bench::server::run(&sandboxctl::bench::server::ServerBenchArgs {
                    hosts: hosts as usize,
                    sandboxes,
                    teams: teams as usize,
                    rate,
                    duration: std::time::Duration::from_secs(duration),
                    list_share,
                    delete_every,
                    heartbeat_interval,
                    out,
                })
                .await
            }
            None if a.density.is_some() => {
                let c = commands::client()?;
                sandboxctl::bench::density::run(
                    &c,
                    &sandboxctl::bench::density::DensityArgs {
                        n: a.density.unwrap_or(1) as usize,
                        template: a.template,
                        memory_mb: a.density_memory_mb,
                        quiet: a.density_quiet,
                        execs: a.density_execs as usize,
                        out: a.out,
                    },
                )
                .await
            }
            None => {
                let c = commands::client()?;
                sandboxctl::bench::run(
                    &c,
                    &sandboxctl::bench::BenchArgs {
                        runs: a.runs,
                        concurrency: a.concurrency,
                        out: a.out,
                        template: a.template,
                        agent_data_dir: a.agent_data_dir,
                        kernel_dir: a.kernel_dir,
                    },
                )
                .await
            }
        },
    }
}

async fn run_server(a: Box<ServerArgs>) -> anyhow::Result<i32> {
    init_logs("info,tower_http=warn", a.log.log_format);
    let metrics_token = a.metrics.token()?;
    let local_agent = a.local_agent.then(|| {
        let cfg = LocalAgentConfig {
            listen: a.local_agent_listen.clone(),
            kernel_dir: a.vm.kernel_dir.clone(),
            accel: a.vm.accel.into(),
            cgroup_root: a.vm.cgroup_root.clone(),
            max_concurrent_boots: a.vm.max_concurrent_boots,
            import_limits: a.vm.import_limits(),
            heartbeat_interval: a.timing.heartbeat_interval,
            sample_interval: a.vm.sample_interval,
            warm_pool: a.vm.warm_pool_config(),
            admin_email: a.admin_email.clone(),
            net: a.vm.net_config(),
            jail: a.vm.jail_config(),
            metrics: agent::prometheus::MetricsConfig {
                listen: agent::prometheus::DEFAULT_LISTEN.parse().ok(),
                token: metrics_token.clone(),
            },
        };
        local::companion(a.data_dir.clone(), cfg)
    });
    let github = match &a.github.github_client_id {
        None => None,
        Some(id) => {
            let secret = match (
                &a.github.github_client_secret_file,
                std::env::var("SANDBOXCTL_GITHUB_CLIENT_SECRET"),
            ) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .map_err(|e| {
                        anyhow::anyhow!("reading --github-client-secret-file {}: {e}", f.display())
                    })?
                    .trim()
                    .to_string(),
                (None, Ok(s)) => s,
                (None, Err(_)) => anyhow::bail!(
                    "--github-client-id needs the secret in --github-client-secret-file or SANDBOXCTL_GITHUB_CLIENT_SECRET"
                ),
            };
            Some(server::api::oauth::GithubConfig {
                client_id: id.clone(),
                client_secret: sandboxctl::crypto::Secret(secret),
                web_url: a.github.github_url.trim_end_matches('/').to_string(),
                api_url: a.github.github_api_url.trim_end_matches('/').to_string(),
            })
        }
    };
    server::run(
        ServerConfig {
            listen: a.listen,
            data_dir: a.data_dir,
            public_url: a.public_url,
            monitor_interval: a.timing.monitor_interval,
            host_stale_after: a.timing.host_stale_after,
            github,
            max_file_bytes: a.max_file_bytes,
            allow_private_agent_addresses: a.allow_private_agent_addresses,
            signup: a.signup,
            bootstrap_requires_token: a.bootstrap_requires_token,
            limits: server_limits(&a.limits),
            team_quota: a.team_quota,
            metrics_token,
            sandbox_domain: a.sandbox_domain,
            tls: match (a.tls_cert, a.tls_key) {
                (Some(cert), Some(key)) => Some(server::listener::TlsFiles { cert, key }),
                _ => None,
            },
            tls_listen: a.tls_listen,
            overcommit: server::scheduler::Overcommit {
                vcpus_per_core: a.vcpu_overcommit,
                memory_percent: a.memory_overcommit,
            },
        },
        local_agent,
    )
    .await?;
    Ok(0)
}

fn server_limits(a: &sandboxctl::cli::limits::LimitArgs) -> server::listener::ServerLimits {
    let defaults = server::listener::ServerLimits::default();
    server::listener::ServerLimits {
        header_read_timeout: a.header_read_timeout,
        request_timeout: a.request_timeout,
        max_connections: a.max_connections as usize,
        stream_idle_timeout: a.stream_idle_timeout,
        max_streams_per_user: a.max_streams_per_user as usize,
        max_concurrent_hashes: a
            .max_concurrent_hashes
            .map_or(defaults.max_concurrent_hashes, |n| n as usize),
        trusted_proxies: a.trusted_proxy.clone(),
        shutdown_timeout: a.shutdown_timeout,
    }
}
