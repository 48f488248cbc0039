//! The identity gate: a create answers before the guest has acknowledged its Init, so these
//! race a command against the hand-over on a socket whose far end plays a slow or refusing
//! guest (the guest is hostile by assumption; the host's side is what is under test).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::*;
use crate::proto::guest::ErrorMsg;

const SOCK: &str = "agent.sock";

/// The far end of the channel: reads frames, writes frames.
struct FarEnd {
    s: UnixStream,
    decoder: FrameDecoder,
}

impl FarEnd {
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Some(f);
            }
            let n = tokio::time::timeout_at(deadline.into(), self.s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    async fn send(&mut self, f: Frame) {
        self.s.write_all(&f.encode().unwrap()).await.unwrap();
    }

    /// Answers the host's Hello.
    async fn handshake(&mut self) {
        let hello = self.next(Duration::from_secs(5)).await.expect("a Hello");
        assert_eq!(hello.kind, FrameKind::Hello);
        let nonce = hello.parse::<Hello>().unwrap().nonce;
        let ack = HelloAck {
            nonce,
            protocol: PROTOCOL_VERSION,
            version: "test".into(),
            sandbox_id: None,
            uptime_ms: 0,
            running: 0,
        };
        self.send(Frame::json(FrameKind::HelloAck, 0, &ack)).await;
    }
}

async fn connected() -> (tempfile::TempDir, GuestChannel, FarEnd) {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join(SOCK)).unwrap();
    let channel = GuestChannel::new(dir.path(), SOCK);
    let (connected, accepted) = tokio::join!(
        async {
            let (s, _) = listener.accept().await.unwrap();
            let mut far = FarEnd {
                s,
                decoder: FrameDecoder::new(),
            };
            far.handshake().await;
            far
        },
        channel.connect(Duration::from_secs(5)),
    );
    accepted.unwrap();
    (dir, channel, connected)
}

/// What both tests start with, as a create's caller would: the Init sent (the far end has read
/// it; its stream id) and a command started right after it.
async fn init_then_command(
    channel: GuestChannel,
    far: &mut FarEnd,
) -> (
    Arc<GuestChannel>,
    GuestStream,
    u64,
    tokio::task::JoinHandle<Result<CapturedOutput, ChannelError>>,
) {
    let init = crate::agent::vm::instance::new_init("sbx-new", &Default::default(), None);
    let pending = channel
        .begin_init(&init, Duration::from_secs(5))
        .await
        .unwrap();
    let f = far.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(f.kind, FrameKind::Init);
    let channel = Arc::new(channel);
    let exec = tokio::spawn({
        let channel = channel.clone();
        async move {
            channel
                .exec(&true_cmd(), 1024, Duration::from_secs(10))
                .await
        }
    });
    (channel, pending, f.id, exec)
}

fn true_cmd() -> ExecStart {
    ExecStart {
        cmd: "true".into(),
        ..ExecStart::default()
    }
}

/// A command sent the moment the create answered reaches the guest only after the guest
/// acknowledged its identity, however long that takes; pings are not held back.
#[tokio::test]
async fn a_command_waits_for_the_identity() {
    let (_dir, channel, mut far) = connected().await;
    let (channel, pending, init_id, exec) = init_then_command(channel, &mut far).await;
    // The slow guest: nothing but health traffic may arrive before it answers.
    let held = Instant::now();
    while held.elapsed() < Duration::from_millis(500) {
        if let Some(f) = far.next(Duration::from_millis(100)).await {
            assert_eq!(f.kind, FrameKind::Ping, "{:?} before the InitAck", f.kind);
            far.send(Frame::new(FrameKind::Pong, f.id, f.payload)).await;
        }
    }
    let ack = InitAck {
        previous_time_unix_ms: 0,
    };
    far.send(Frame::json(FrameKind::InitAck, init_id, &ack))
        .await;
    channel
        .finish_init(pending, Instant::now() + Duration::from_secs(5), true)
        .await
        .unwrap();
    let start = loop {
        let f = far.next(Duration::from_secs(5)).await.expect("the command");
        if f.kind == FrameKind::Ping {
            far.send(Frame::new(FrameKind::Pong, f.id, f.payload)).await;
            continue;
        }
        break f;
    };
    assert_eq!(start.kind, FrameKind::ExecStart);
    let exit = Exit {
        exit_code: 0,
        signal: None,
        timed_out: false,
        duration_ms: 1,
    };
    far.send(Frame::json(FrameKind::Exit, start.id, &exit))
        .await;
    let out = exec.await.unwrap().unwrap();
    assert_eq!(out.exit.exit_code, 0);
    assert!(channel.cut_reason().is_none());
}

/// A guest that refuses its identity is cut off: the waiting command fails and never reaches
/// it, and so does every later one.
#[tokio::test]
async fn a_guest_that_refuses_its_identity_serves_nothing() {
    let (_dir, channel, mut far) = connected().await;
    let (channel, pending, init_id, exec) = init_then_command(channel, &mut far).await;
    let refusal = ErrorMsg {
        message: "no".into(),
        code: None,
    };
    far.send(Frame::json(FrameKind::Error, init_id, &refusal))
        .await;
    let e = channel
        .finish_init(pending, Instant::now() + Duration::from_secs(5), true)
        .await
        .unwrap_err();
    assert!(matches!(e, ChannelError::Guest(_)), "{e:?}");
    let e = exec.await.unwrap().unwrap_err();
    assert!(matches!(e, ChannelError::CutOff(_)), "{e:?}");
    let again = channel
        .exec(&true_cmd(), 1024, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(again, ChannelError::CutOff(_)), "{again:?}");
    while let Some(f) = far.next(Duration::from_millis(300)).await {
        assert_ne!(f.kind, FrameKind::ExecStart, "a command reached the guest");
    }
}
