//! The fallback start of task processes, `posix_spawn`, used where the
//! clone of `Spec::start` is not available. Alone in its binary: it switches
//! the whole test process over before starting anything.

use workbus_supervisor::Spec;

mod common;

#[tokio::test]
async fn posix_spawn_starts_workers_as_the_clone_does() {
    workbus_supervisor::use_posix_spawn();
    common::a_task_process_starts_as_it_should(false).await;
    // A missing program: an error from start itself (posix_spawn waits for
    // the exec), naming it.
    let e = Spec {
        program: "/nonexistent/worker".into(),
        ..Spec::default()
    }
    .start()
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/worker"), "{e}");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
