//! `sandbox exec` (streamed) and `sandbox shell` (an interactive PTY) over the exec WebSocket.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use super::client::ApiClient;
use crate::proto::api::{
    ExecClientMessage, ExecServerMessage, ExecStreamStart, PtySize, STREAM_STDERR, STREAM_STDIN,
    STREAM_STDOUT,
};

/// Puts the terminal in raw mode until dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

fn term_size() -> Option<PtySize> {
    // SAFETY: TIOCGWINSZ fills a winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0).then_some(PtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    }
}

/// Runs a command over the stream; returns its exit code. With `pty`, the local terminal is put in
/// raw mode and its size follows the window.
pub async fn run(
    client: &ApiClient,
    id: &str,
    start: ExecStreamStart,
    forward_stdin: bool,
) -> anyhow::Result<i32> {
    let token = client.token().context("not logged in")?;
    let url = format!(
        "{}/v1/sandboxes/{id}/exec/stream",
        client.base().replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().context("server URL")?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .to_string();
            let msg = serde_json::from_str::<crate::proto::api::ErrorBody>(&body)
                .map(|b| format!("{} ({})", b.error.message, b.error.code))
                .unwrap_or(body);
            bail!("{msg} (HTTP {})", resp.status().as_u16());
        }
        Err(e) => return Err(e).context("opening the exec stream"),
    };
    let (mut tx, mut rx) = ws.split();
    let pty = start.pty.is_some();
    tx.send(Message::Text(
        serde_json::to_string(&ExecClientMessage::Start(start))?.into(),
    ))
    .await?;
    let _raw = if pty { RawMode::enable() } else { None };

    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Message>(16);
    if forward_stdin {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let eof =
                            serde_json::to_string(&ExecClientMessage::Eof).unwrap_or_default();
                        let _ = in_tx.send(Message::Text(eof.into())).await;
                        break;
                    }
                    Ok(n) => {
                        let mut m = Vec::with_capacity(n + 1);
                        m.push(STREAM_STDIN);
                        m.extend_from_slice(&buf[..n]);
                        if in_tx.send(Message::Binary(m.into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        let eof = serde_json::to_string(&ExecClientMessage::Eof)?;
        in_tx.send(Message::Text(eof.into())).await?;
    }
    if pty {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(sz) = term_size() {
                    let m = serde_json::to_string(&ExecClientMessage::Resize {
                        rows: sz.rows,
                        cols: sz.cols,
                    })
                    .unwrap_or_default();
                    if in_tx.send(Message::Text(m.into())).await.is_err() {
                        break;
                    }
                }
            }
        });
    } else {
        // Ctrl-C is passed on to the command instead of ending the CLI.
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                let m = serde_json::to_string(&ExecClientMessage::Signal {
                    signal: libc::SIGINT,
                })
                .unwrap_or_default();
                if in_tx.send(Message::Text(m.into())).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(in_tx);
    let pump = tokio::spawn(async move {
        while let Some(m) = in_rx.recv().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });

    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut code = None;
    while let Some(m) = rx.next().await {
        match m.context("the exec stream broke")? {
            Message::Binary(b) if !b.is_empty() => match b[0] {
                STREAM_STDOUT => {
                    out.write_all(&b[1..])?;
                    out.flush()?;
                }
                STREAM_STDERR => {
                    err.write_all(&b[1..])?;
                    err.flush()?;
                }
                _ => {}
            },
            Message::Text(t) => match serde_json::from_str::<ExecServerMessage>(&t) {
                Ok(ExecServerMessage::Exit {
                    exit_code,
                    timed_out,
                    ..
                }) => {
                    if timed_out {
                        eprintln!("\r\nsandboxctl: the command timed out");
                    }
                    code = Some(exit_code);
                    break;
                }
                Ok(ExecServerMessage::Error { code: c, message }) => bail!("{message} ({c})"),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    pump.abort();
    code.context("the stream ended before the command did")
}

/// What `sandbox shell` starts: a login shell on a PTY the size of this terminal.
pub fn shell_start() -> anyhow::Result<ExecStreamStart> {
    if !std::io::stdin().is_terminal() {
        bail!("`sandbox shell` needs a terminal; use `sandbox exec ID -- sh` for pipes");
    }
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "TERM".to_string(),
        std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
    );
    Ok(ExecStreamStart {
        cmd: "/bin/sh".into(),
        args: vec!["-l".into()],
        env,
        cwd: Some("/root".into()),
        timeout_sec: None,
        pty: Some(term_size().unwrap_or(PtySize { rows: 24, cols: 80 })),
    })
}
