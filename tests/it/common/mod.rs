//! The harness: the real `sandboxctl` binary as server and agent processes, on ephemeral ports,
//! with temp data dirs. Logs go to files in the data dirs (printed on failure with TEST_LOG=1).

#![allow(dead_code)]

pub mod archives;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandboxctl::cli::client::ApiClient;
use sandboxctl::crypto::agent_call::{CallBinding, CallSigner};
use sandboxctl::proto::api::{AuthResponse, CreateHostRequest};
use tokio::sync::{Semaphore, SemaphorePermit};

pub const BIN: &str = env!("CARGO_BIN_EXE_sandboxctl");

pub fn kernel_dir() -> PathBuf {
    std::env::var_os("SANDBOXCTL_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/sandboxctl/kernel"))
}

/// A VM manager's settings for tests that drive one directly: the test binary as guest program.
pub fn vm_config(data_dir: &Path) -> sandboxctl::agent::vm::VmConfig {
    sandboxctl::agent::vm::VmConfig {
        data_dir: data_dir.to_path_buf(),
        kernel_dir: kernel_dir(),
        accel: sandboxctl::agent::vm::AccelChoice::Auto,
        guest_binary: Some(PathBuf::from(BIN)),
        cgroup_root: sandboxctl::agent::vm::cgroup::CgroupChoice::Auto,
        max_concurrent_boots: 0,
        net: Default::default(),
        jail: Default::default(),
        import_limits: Default::default(),
        sample_interval: std::time::Duration::from_secs(5),
        warm_pool: Default::default(),
    }
}

/// The agents' host-wide nftables table (one per pool) outlives them by design; the suite
/// removes it when the test process exits, once no sandbox namespace is left.
fn remove_host_table_at_exit() {
    extern "C" fn cleanup() {
        let left = std::fs::read_dir(sandboxctl::agent::net::NETNS_DIR)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("sbx-"))
            })
            .unwrap_or(false);
        if !left {
            let pool = sandboxctl::proto::net::Cidr::parse(sandboxctl::agent::net::DEFAULT_POOL)
                .expect("pool");
            let table = sandboxctl::agent::net::rules::host_table_name(&pool);
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &table])
                .stderr(Stdio::null())
                .status();
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function that runs at process exit.
    ONCE.call_once(|| unsafe {
        libc::atexit(cleanup);
    });
}

/// Tests that boot microVMs take this first: on 2 cores, one at a time keeps boots honest.
pub async fn vm_permit() -> SemaphorePermit<'static> {
    remove_host_table_at_exit();
    static SEM: OnceLock<Semaphore> = OnceLock::new();
    SEM.get_or_init(|| Semaphore::new(1))
        .acquire()
        .await
        .expect("semaphore open")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_env(cmd: &mut Command) {
    cmd.env(
        "SANDBOXCTL_LOG",
        std::env::var("TEST_LOG_FILTER").unwrap_or_else(|_| "info".into()),
    );
}

/// The file in a test server's temp dir that offsets its clock (see [`TestServer::advance_clock`]).
const CLOCK_FILE: &str = "clock-offset";

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub url: String,
    child: Child,
    /// `--signup` as started (None: the server's own default); a restart keeps it.
    signup: Option<String>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    /// A server with extra flags. Test agents listen on loopback, so BYOC hosts on private
    /// addresses are allowed (as on a single machine); see [`Self::start_strict`].
    pub async fn start_with(extra: &[&str]) -> TestServer {
        Self::launch(extra, true).await
    }

    /// A server whose signup rule is under test: `--signup MODE` for `Some(MODE)`, the server's own
    /// default (`invite`) for `None`, plus `extra` flags. Every other server of the harness takes
    /// anyone (`--signup open`), so that tests can sign users up freely.
    pub async fn start_signup(mode: Option<&str>, extra: &[&str]) -> TestServer {
        Self::launch_in(tempfile::tempdir().unwrap(), extra, true, mode).await
    }

    /// A server as in production: BYOC agents on private addresses are refused.
    pub async fn start_strict(extra: &[&str]) -> TestServer {
        Self::launch(extra, false).await
    }

    /// A server on an existing temp dir (its data dir is `dir/data`), e.g. one a backup was
    /// restored into.
    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TestServer {
        Self::launch_in(dir, extra, true, Some("open")).await
    }

    async fn launch(extra: &[&str], allow_private_agents: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::launch_in(dir, extra, allow_private_agents, Some("open")).await
    }

    async fn launch_in(
        dir: tempfile::TempDir,
        extra: &[&str],
        allow_private_agents: bool,
        signup: Option<&str>,
    ) -> TestServer {
        let (child, url) = Self::spawn_at(
            dir.path(),
            "127.0.0.1:0",
            extra,
            allow_private_agents,
            signup,
        );
        let s = TestServer {
            dir,
            url,
            child,
            signup: signup.map(str::to_string),
        };
        s.wait_healthy().await;
        s
    }

    /// Kills the server with SIGKILL (mid-work, no cleanup) and starts it again with `extra` on
    /// the same data dir and port, as an operator's restart would (agents keep its URL).
    pub async fn crash_and_restart(&mut self, extra: &[&str]) {
        self.kill();
        let listen = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let (child, url) = Self::spawn_at(
            self.dir.path(),
            &listen,
            extra,
            true,
            self.signup.as_deref(),
        );
        self.child = child;
        self.url = url;
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        let c = self.anon();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.healthz().await {
            assert!(Instant::now() < deadline, "server never became healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn_at(
        dir: &Path,
        listen: &str,
        extra: &[&str],
        allow_private_agents: bool,
        signup: Option<&str>,
    ) -> (Child, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--listen", listen, "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .args(signup.map(|m| format!("--signup={m}")))
            .env_remove("SANDBOXCTL_SIGNUP")
            .env_remove("SANDBOXCTL_BOOTSTRAP_REQUIRES_TOKEN")
            .args(allow_private_agents.then_some("--allow-private-agent-addresses"))
            .env(
                sandboxctl::server::clock::TEST_CLOCK_FILE_ENV,
                dir.join(CLOCK_FILE),
            )
            .stdout(Stdio::piped())
            .stderr(log);
        log_env(&mut cmd);
        let mut child = cmd.spawn().expect("server starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(url) = line.strip_prefix("sandboxctl server listening on ") {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed its URL");
        (child, url)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Moves the server's clock `secs` forward (added to earlier moves), so tokens expire and
    /// hosts go stale without waiting or editing the database. Agents keep the real time: calls
    /// the server signs for them after a big move look as if they came from the future.
    pub fn advance_clock(&self, secs: i64) {
        let file = self.dir.path().join(CLOCK_FILE);
        let before: i64 = std::fs::read_to_string(&file)
            .map(|t| t.trim().parse().expect("clock offset"))
            .unwrap_or(0);
        // Written aside and renamed, so the server never reads half a number.
        let tmp = self.dir.path().join(format!("{CLOCK_FILE}.tmp"));
        std::fs::write(&tmp, (before + secs).to_string()).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    }

    /// Kills the server process and waits for it; the temp dir stays until the value is dropped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn anon(&self) -> ApiClient {
        ApiClient::new(&self.url, None)
    }

    /// Signs up a user; returns the auth answer and a client with its token.
    pub async fn signup(&self, email: &str, name: &str) -> (AuthResponse, ApiClient) {
        let r = self
            .anon()
            .signup(email, "correct horse battery", name)
            .await
            .expect("signup");
        let c = self.anon().with_token(&r.token);
        (r, c)
    }

    /// Opens the server's real SQLite file, to check what it stored (tests move time with
    /// [`Self::advance_clock`], not by editing rows).
    pub fn sqlite(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.data_dir().join("sandboxctl.db")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub host_id: String,
    pub addr: String,
    /// What `sandboxctl agent register` printed.
    pub registered: String,
    /// The binary the agent runs (and puts into its guests): the test build, or another one.
    bin: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl TestAgent {
    /// Creates a regular host as `admin`, registers a real agent process with the token, runs it,
    /// and waits until the server sees the host online and the agent answers.
    pub async fn start(server: &TestServer, admin: &ApiClient) -> TestAgent {
        Self::start_with(server, admin, &[]).await
    }

    pub async fn start_with(server: &TestServer, admin: &ApiClient, extra: &[&str]) -> TestAgent {
        let req = CreateHostRequest {
            host_type: "regular".into(),
            team_id: None,
            name: Some("test".into()),
            provider: None,
            zone: None,
        };
        Self::start_host(server, admin, &req, extra).await
    }

    /// Creates the host described by `req` as `creator` (a platform admin, or a team owner for a
    /// BYOC host) and starts an agent for it.
    pub async fn start_host(
        server: &TestServer,
        creator: &ApiClient,
        req: &CreateHostRequest,
        extra: &[&str],
    ) -> TestAgent {
        Self::start_advertising(server, creator, req, extra, None).await
    }

    /// Like [`Self::start_host`], with the agent telling the server to call it at `advertise`
    /// (for example a proxy in front of it) instead of where it listens.
    pub async fn start_advertising(
        server: &TestServer,
        creator: &ApiClient,
        req: &CreateHostRequest,
        extra: &[&str],
        advertise: Option<&str>,
    ) -> TestAgent {
        Self::start_full(server, creator, req, extra, advertise, Path::new(BIN)).await
    }

    /// A regular host whose agent is `bin` (e.g. the static release binary) instead of the test
    /// build; its guests run that binary too.
    pub async fn start_binary(
        server: &TestServer,
        admin: &ApiClient,
        bin: &Path,
        extra: &[&str],
    ) -> TestAgent {
        let req = CreateHostRequest {
            host_type: "regular".into(),
            team_id: None,
            name: Some("test".into()),
            provider: None,
            zone: None,
        };
        Self::start_full(server, admin, &req, extra, None, bin).await
    }

    async fn start_full(
        server: &TestServer,
        creator: &ApiClient,
        req: &CreateHostRequest,
        extra: &[&str],
        advertise: Option<&str>,
        bin: &Path,
    ) -> TestAgent {
        let admin = creator;
        let created = admin.create_host(req).await.expect("host create");
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let out = Command::new(bin)
            .args([
                "agent",
                "register",
                "--server",
                &server.url,
                "--token",
                &created.registration_token,
                "--listen",
                &addr,
                "--advertise",
                advertise.unwrap_or(&addr),
                "--data-dir",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "register failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut a = TestAgent {
            dir,
            host_id: created.host.id.clone(),
            addr,
            registered: String::from_utf8_lossy(&out.stdout).into_owned(),
            bin: bin.to_path_buf(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a.wait_ready(admin).await;
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["agent", "run", "--data-dir"])
            .arg(self.dir.path())
            .arg("--kernel-dir")
            .arg(kernel_dir())
            .args(["--heartbeat-interval", "1s"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log);
        log_env(&mut cmd);
        self.child = Some(cmd.spawn().expect("agent starts"));
    }

    /// Waits until the agent's port accepts connections and its heartbeat reached the server.
    pub async fn wait_ready(&self, admin: &ApiClient) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let port_up = tokio::net::TcpStream::connect(&self.addr).await.is_ok();
            let hb = admin
                .get_host(&self.host_id)
                .await
                .map(|h| h.status == "online" && h.templates.iter().any(|t| t == "minimal"))
                .unwrap_or(false);
            if port_up && hb {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent never became ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the agent as an operator or systemd would (SIGTERM) and waits for it to exit; its
    /// VMs stay. Answers how the process ended.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("the agent runs");
        signal(c.id(), libc::SIGTERM);
        c.wait().expect("the agent exits")
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// QEMU processes whose command line mentions this agent's data dir.
    pub fn qemu_pids(&self) -> Vec<u32> {
        qemu_pids_under(self.dir.path())
    }
}

/// QEMUs under `dir` and any other process that names `dir` on its command line (an agent's child
/// that has not become QEMU yet), this test process aside.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().to_string();
    let me = std::process::id();
    let mut out = qemu_pids_under(dir);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if pid != me && !out.contains(&pid) && String::from_utf8_lossy(&cmd).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

pub fn qemu_pids_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let cwd = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.starts_with(dir))
            .unwrap_or(false);
        if cmd.contains("qemu-system") && (cwd || cmd.contains(&needle)) {
            out.push(pid);
        }
    }
    out
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
        // VMs outlive their agent on purpose; a test's VMs must not outlive the test. A create the
        // agent was in the middle of may still be a child between fork and exec (its command line
        // still the agent's), so look again until two scans in a row find nothing.
        let (mut quiet, mut scans) = (0, 0);
        while quiet < 2 && scans < 50 {
            scans += 1;
            let left = processes_under(self.dir.path());
            quiet = if left.is_empty() { quiet + 1 } else { 0 };
            for pid in left {
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // And so must their network namespaces (a test that failed left its sandboxes) and their
        // cgroups (empty now that their QEMUs are gone; the folders under vms/ name them).
        sandboxctl::agent::net::remove_namespaces_of(self.dir.path());
        let cgroups = sandboxctl::agent::vm::cgroup::Cgroups::detect(
            &sandboxctl::agent::vm::cgroup::CgroupChoice::Auto,
        );
        if let (Some(root), Ok(vms)) = (
            cgroups.root(),
            std::fs::read_dir(self.dir.path().join("vms")),
        ) {
            for vm in vms.flatten() {
                let _ = std::fs::remove_dir(root.join(vm.file_name()));
            }
        }
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// An exec request for `cmd` with `args`.
pub fn exec(cmd: &str, args: &[&str]) -> sandboxctl::proto::api::ExecRequest {
    sandboxctl::proto::api::ExecRequest {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A raw HTTP call, for inputs the typed client cannot send.
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The error code of an error answer.
pub fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Runs the CLI with its own config file; returns (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("SANDBOXCTL_CONFIG", config)
        .env_remove("SANDBOXCTL_SERVER")
        .env_remove("SANDBOXCTL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub fn urlenc(s: &str) -> String {
    sandboxctl::urlencode::encode(s)
}

/// Adds the user behind `member` to `team` with `role` the only way there is: `inviter` (a team
/// owner or admin, or a platform admin) makes an invite and `member` accepts it.
pub async fn add_member(inviter: &ApiClient, team: &str, member: &ApiClient, role: &str) {
    let invite = inviter
        .create_invite(team, role)
        .await
        .expect("invite created");
    member
        .accept_invite(&invite.token)
        .await
        .expect("invite accepted");
}

/// A default sandbox on `agent`, created as soon as the agent can take one (a fresh agent may still
/// be building its template: those creates answer 503 and are tried again).
pub async fn create_when_ready(
    client: &ApiClient,
    agent: &TestAgent,
) -> sandboxctl::proto::api::SandboxResponse {
    let created = std::cell::RefCell::new(None);
    wait_until(
        "a sandbox is created (the agent may still build its template)",
        Duration::from_secs(120),
        || async {
            match client
                .create_sandbox(&sandboxctl::proto::api::CreateSandboxRequest::default())
                .await
            {
                Ok(sb) => {
                    *created.borrow_mut() = Some(sb);
                    true
                }
                Err(e) if e.status() == Some(503) => false,
                Err(e) => panic!("create: {e}\nagent log:\n{}", agent.log()),
            }
        },
    )
    .await;
    created.into_inner().expect("created")
}

/// Polls `check` every 100 ms until it is true; after `timeout`, fails naming `what` it waited
/// for. Use it instead of sleeping for "long enough".
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one named step of a longer story over shared VMs; if it fails, the failure names the
/// step (and keeps the original message), so a long story reports which of its parts broke.
pub async fn step<T>(name: &str, fut: impl std::future::Future<Output = T>) -> T {
    use futures_util::FutureExt;
    // Shown with a failed test's output, so a step that hangs can be found too.
    eprintln!("step: {name}");
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("step failed: {name}\n{msg}")
        }
    }
}

/// The server's signer of agent calls, from its real key file.
pub fn call_signer(server: &TestServer) -> CallSigner {
    let seed: [u8; 32] = std::fs::read(server.data_dir().join("agent-signing.key"))
        .unwrap()
        .try_into()
        .unwrap();
    CallSigner::new(&sandboxctl::crypto::SigningKeyPair::from_seed(seed))
}

/// A token for one call to an agent as the server would make it, signed with the server's real
/// key and bound to `method`, `path` (with query) and `body`; `age_secs` back-dates it.
pub fn agent_call_token(
    server: &TestServer,
    host_id: &str,
    method: &str,
    path: &str,
    body: &[u8],
    age_secs: i64,
) -> String {
    call_signer(server)
        .sign(
            host_id,
            &CallBinding::new(method, path, body),
            sandboxctl::crypto::agent_call::unix_now() - age_secs,
        )
        .unwrap()
}

pub fn signal(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Host facts for a registration or heartbeat by hand (no agent behind them).
pub fn facts(addr: &str) -> sandboxctl::proto::agent::HostFacts {
    sandboxctl::proto::agent::HostFacts {
        arch: "x86_64".into(),
        cpu_cores: 2,
        memory_mb: 2048,
        disk_gb: 10,
        address: addr.into(),
        accel: sandboxctl::proto::agent::Accelerator::Tcg,
        accel_reason: "test".into(),
        cgroups: String::new(),
        version: "test".into(),
    }
}

/// A request for a regular host.
pub fn regular() -> CreateHostRequest {
    CreateHostRequest {
        host_type: "regular".into(),
        team_id: None,
        name: None,
        provider: None,
        zone: None,
    }
}

/// Creates a regular host as `admin` and registers it by hand (no agent process); returns its id
/// and the registration answer (host JWT, refresh token).
pub async fn register_host(s: &TestServer, admin: &ApiClient) -> (String, serde_json::Value) {
    let created = admin.create_host(&regular()).await.unwrap();
    let body =
        serde_json::json!({ "token": created.registration_token, "facts": facts("127.0.0.1:1") })
            .to_string();
    let (st, reg) = raw(
        reqwest::Method::POST,
        &format!("{}/v1/hosts/register", s.url),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(st, 200, "{reg}");
    (created.host.id, reg)
}

/// Logs the CLI in as `email` (the harness's password) with its own config file; returns its path.
pub fn cli_login(s: &TestServer, email: &str) -> PathBuf {
    let cfg = s.dir.path().join(format!("cli-{email}.toml"));
    let (rc, _, err) = cli(
        &cfg,
        &[
            "login",
            "--server",
            &s.url,
            "--email",
            email,
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    );
    assert_eq!(rc, 0, "{err}");
    cfg
}
