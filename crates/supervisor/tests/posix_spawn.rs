//! The fallback start of task processes, `posix_spawn`, used where the
//! clone of `Spec::start` is not available. Alone in its binary: it switches
//! the whole test process over before starting anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use workbus_supervisor::Spec;

mod common;

#[tokio::test]
async fn posix_spawn_starts_workers_as_the_clone_does() {
    workbus_supervisor::use_posix_spawn();
    common::a_task_process_starts_as_it_should(false).await;
    // A missing program: an error from start, naming it.
    let (_tx, rx) = oneshot::channel();
    let spec = Spec {
        program: "/nonexistent/worker".into(),
        ..Spec::default()
    };
    let e = match spec.start() {
        Err(e) => e,
        Ok(r) => r
            .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
            .await
            .unwrap_err(),
    };
    assert!(e.to_string().contains("/nonexistent/worker"), "{e}");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
