//! The harness's own helpers: a failed step names itself, a wait that times out names what it
//! waited for.

use std::time::Duration;

use futures_util::FutureExt;

use crate::common::{step, wait_until};

/// The panic message of `fut`, which must panic.
async fn panic_message(fut: impl std::future::Future<Output = ()>) -> String {
    let e = std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .expect_err("it panics");
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_step_passes_its_value_through() {
    assert_eq!(step("adds", async { 2 + 2 }).await, 4);
}

#[tokio::test]
async fn a_failed_step_names_itself_and_keeps_the_message() {
    let msg = panic_message(async {
        step("the answer is checked", async {
            assert_eq!(41, 42, "off by one");
        })
        .await;
    })
    .await;
    assert!(
        msg.starts_with("step failed: the answer is checked\n"),
        "{msg}"
    );
    assert!(msg.contains("off by one"), "{msg}");
}

#[tokio::test]
async fn a_wait_that_times_out_names_what_it_waited_for() {
    let msg = panic_message(wait_until(
        "a condition that never holds",
        Duration::from_millis(300),
        || async { false },
    ))
    .await;
    assert!(
        msg.contains("waiting for: a condition that never holds"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_wait_returns_once_its_condition_holds() {
    let polls = std::cell::Cell::new(0);
    wait_until("the third poll", Duration::from_secs(10), || async {
        polls.set(polls.get() + 1);
        polls.get() == 3
    })
    .await;
    assert_eq!(polls.get(), 3);
}
