//! The one translation of an agent's errors into the service's. Tenants see our words ("the host
//! could not start the sandbox"); the agent's own text (host paths, QEMU messages, connection
//! errors) goes to the log for operators, never into an answer. Only the agent's verdicts on the
//! tenant's own input pass through: a field it refused (400/422), a file it will not touch (403,
//! 409 with the file error code) and an archive over its limit (413 on an import). So does the
//! sandbox's own state, named as the guest's and not the host's: a guest that stopped answering
//! (504 `guest_unresponsive`) and a full disk in the guest (507 `guest_disk_full`).

use super::error::SandboxError;
use crate::proto::guest::FileErrorCode;
use crate::server::pool::AgentError;

/// What the server asked the agent, which decides what an error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCall {
    /// Creating (booting or restoring) a sandbox's VM.
    StartVm,
    /// Any other call about one VM (pause, resume, exec, network, snapshot, logs, destroy).
    Vm,
    /// A file of a sandbox (read, write, list, stat, mkdir, remove).
    File,
    /// A template image upload.
    Import,
    /// A template call not about one VM (build, list, delete).
    Template,
}

impl AgentCall {
    fn verb(self) -> &'static str {
        match self {
            AgentCall::StartVm => "starting a sandbox",
            AgentCall::Vm => "a sandbox call",
            AgentCall::File => "a file call",
            AgentCall::Import => "a template import",
            AgentCall::Template => "a template call",
        }
    }
}

/// Translates an error of `call` on host `host_id`, logging the agent's side of it.
pub fn translate(call: AgentCall, host_id: &str, e: AgentError) -> SandboxError {
    let out = map(call, &e);
    match &out {
        SandboxError::Host { code, .. } => {
            tracing::warn!(host = %host_id, call = call.verb(), code, error = %e, "agent call failed")
        }
        _ => {
            tracing::debug!(host = %host_id, call = call.verb(), error = %e, "agent refused a call")
        }
    }
    out
}

/// The pure mapping: our answer for `e`. Nothing of the agent's text reaches a `Host` error.
fn map(call: AgentCall, e: &AgentError) -> SandboxError {
    use AgentCall::*;
    if let AgentError::Remote {
        status: 400 | 422,
        message,
        field,
        ..
    } = e
    {
        let field = field.clone().unwrap_or_else(|| "request".into());
        // The agent's message already starts with the field's name, and so will ours.
        let message = message
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(message)
            .to_string();
        return SandboxError::Invalid { field, message };
    }
    if call == StartVm {
        return SandboxError::Host {
            code: "sandbox_start_failed",
            message: match e {
                AgentError::Remote { status, .. } => {
                    format!("the host could not start the sandbox (it answered {status})")
                }
                AgentError::Unreachable(_) => {
                    "the host could not start the sandbox: it did not answer".into()
                }
                AgentError::BadAnswer(_) => {
                    "the host could not start the sandbox: its answer was not acceptable".into()
                }
            },
        };
    }
    match e {
        AgentError::Unreachable(_) => SandboxError::Host {
            code: "host_unreachable",
            message: "the sandbox's host did not answer".into(),
        },
        AgentError::BadAnswer(_) => SandboxError::Host {
            code: "host_bad_answer",
            message: "the sandbox's host sent an answer the server does not accept".into(),
        },
        AgentError::Remote {
            status,
            code,
            message,
            ..
        } => match (call, *status) {
            (File, 404) if FileErrorCode::from_code(code) == Some(FileErrorCode::FileNotFound) => {
                SandboxError::NotFound("file")
            }
            (Vm | File, 404) => SandboxError::conflict(
                "sandbox_not_running",
                "the sandbox's VM is gone from its host",
            ),
            (_, 404) => SandboxError::NotFound("sandbox on its host"),
            (Vm, 502) if code == "port_closed" => SandboxError::conflict(
                "port_closed",
                "the sandbox is running but nothing listens on that port",
            ),
            (File, 413) => SandboxError::TooLarge,
            (Import, 413) => SandboxError::TooLargeBecause(message.clone()),
            // The guest's own state, told as such: it stopped answering, its disk is full.
            (Vm | File, 504) if code == "guest_unresponsive" => SandboxError::GuestUnresponsive(
                "the sandbox stopped answering (its guest is frozen: too many processes, out of \
                 memory, or a kernel that no longer runs it); delete it or wait for it to recover"
                    .into(),
            ),
            (File, 507) if FileErrorCode::from_code(code) == Some(FileErrorCode::NoSpace) => {
                SandboxError::GuestDiskFull(
                    "no space left on the sandbox's disk (or the filesystem written to); free \
                     some and retry"
                        .into(),
                )
            }
            (File, 403) => SandboxError::Forbidden {
                code: "permission_denied",
                message: message.clone(),
            },
            (File, 409) => {
                use FileErrorCode::*;
                let code = match FileErrorCode::from_code(code) {
                    Some(c @ (IsADirectory | NotADirectory | Exists | NotEmpty)) => c.as_str(),
                    _ => "file_conflict",
                };
                SandboxError::conflict(code, message.clone())
            }
            (_, 409) => SandboxError::conflict("sandbox_conflict", message.clone()),
            (_, status) => SandboxError::Host {
                code: "host_error",
                message: format!("the sandbox's host failed (it answered {status})"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(status: u16, code: &str, message: &str) -> AgentError {
        AgentError::Remote {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
        }
    }

    /// (status, code, message) of a mapped error, as the REST API would answer it.
    fn parts(e: SandboxError) -> (&'static str, String) {
        match e {
            SandboxError::Invalid { field, message } => {
                ("invalid_field", format!("{field}: {message}"))
            }
            SandboxError::NotFound(w) => ("not_found", w.to_string()),
            SandboxError::Conflict { code, message } => (code, message),
            SandboxError::Forbidden { code, message } => (code, message),
            SandboxError::TooLarge => ("payload_too_large", String::new()),
            SandboxError::TooLargeBecause(m) => ("payload_too_large", m),
            SandboxError::Host { code, message } => (code, message),
            SandboxError::GuestUnresponsive(m) => ("guest_unresponsive", m),
            SandboxError::GuestDiskFull(m) => ("guest_disk_full", m),
            other => ("other", other.to_string()),
        }
    }

    const SECRET: &str =
        "qemu-system-x86_64: /var/lib/sandboxctl/vms/sbx_a/disk.img: Permission denied";

    #[test]
    fn host_failures_never_carry_the_agents_text() {
        for call in [
            AgentCall::StartVm,
            AgentCall::Vm,
            AgentCall::File,
            AgentCall::Import,
            AgentCall::Template,
        ] {
            for e in [
                remote(500, "internal", SECRET),
                remote(503, "held", SECRET),
                remote(307, "agent_error", SECRET),
                AgentError::Unreachable(SECRET.into()),
                AgentError::BadAnswer(SECRET.into()),
            ] {
                let shown = format!("{e}");
                let (code, message) = parts(map(call, &e));
                assert!(
                    !message.contains("/var/lib") && !message.contains("qemu"),
                    "{call:?} {shown} -> {code}: {message}"
                );
                let expect = if call == AgentCall::StartVm {
                    "sandbox_start_failed"
                } else {
                    match e {
                        AgentError::Unreachable(_) => "host_unreachable",
                        AgentError::BadAnswer(_) => "host_bad_answer",
                        _ => "host_error",
                    }
                };
                assert_eq!(code, expect, "{call:?} {shown}");
            }
        }
        // The status an agent answered is ours to tell (a redirect, say), not its text.
        let (_, m) = parts(map(AgentCall::StartVm, &remote(307, "agent_error", SECRET)));
        assert_eq!(m, "the host could not start the sandbox (it answered 307)");
    }

    #[test]
    fn verdicts_on_the_tenants_input_keep_their_meaning() {
        let bad = AgentError::Remote {
            status: 422,
            code: "invalid_field".into(),
            message: "must be 1 to 1000".into(),
            field: Some("pty.rows".into()),
        };
        for call in [AgentCall::StartVm, AgentCall::Vm, AgentCall::File] {
            assert_eq!(
                parts(map(call, &bad)),
                ("invalid_field", "pty.rows: must be 1 to 1000".into())
            );
        }
        let file = |status, code| parts(map(AgentCall::File, &remote(status, code, "m")));
        assert_eq!(file(404, "file_not_found"), ("not_found", "file".into()));
        assert_eq!(file(404, "vm_not_found").0, "sandbox_not_running");
        assert_eq!(file(413, "too_large").0, "payload_too_large");
        assert_eq!(
            file(403, "permission_denied"),
            ("permission_denied", "m".into())
        );
        assert_eq!(file(409, "is_a_directory"), ("is_a_directory", "m".into()));
        assert_eq!(file(409, "not_empty").0, "not_empty");
        assert_eq!(file(409, "weird").0, "file_conflict");
        // The guest's own state is named as such, never as the host's failure; the agent's
        // words stay in the log.
        let (code, m) = parts(map(
            AgentCall::Vm,
            &remote(504, "guest_unresponsive", SECRET),
        ));
        assert_eq!(code, "guest_unresponsive");
        assert!(!m.contains("/var/lib"), "{m}");
        assert_eq!(file(504, "guest_unresponsive").0, "guest_unresponsive");
        let (code, m) = parts(map(AgentCall::File, &remote(507, "no_space", SECRET)));
        assert_eq!(code, "guest_disk_full");
        assert!(!m.contains("/var/lib"), "{m}");
        // Not from a template call, nor under another code.
        assert_eq!(
            parts(map(AgentCall::Template, &remote(507, "no_space", "m"))).0,
            "host_error"
        );
        assert_eq!(file(504, "gateway").0, "host_error");
        let vm = |status| parts(map(AgentCall::Vm, &remote(status, "c", "busy")));
        assert_eq!(vm(404).0, "sandbox_not_running");
        assert_eq!(vm(409), ("sandbox_conflict", "busy".into()));
        assert_eq!(vm(413).0, "host_error");
        assert_eq!(
            parts(map(
                AgentCall::Import,
                &remote(413, "too_large", "over 4 GiB")
            )),
            ("payload_too_large", "over 4 GiB".into())
        );
        assert_eq!(
            parts(map(AgentCall::Template, &remote(404, "c", "m"))),
            ("not_found", "sandbox on its host".into())
        );
    }
}
