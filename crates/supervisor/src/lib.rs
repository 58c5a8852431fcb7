//! Worker processes.
//!
//! Every worker runs in its own process group, so that stopping it stops
//! everything it started: SIGTERM to the group, a grace period, then SIGKILL.
//! A process started with `die_with_daemon` (a resident worker) gets
//! SIGKILL when the daemon's thread that started it dies
//! (`PR_SET_PDEATHSIG`); task processes start without a fork
//! ([`Spec::start`]), and the daemon stops those a killed predecessor left
//! behind when it starts.

mod backoff;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod launch;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
#[path = "launch_none.rs"]
mod launch;
mod process;
mod user;

pub use backoff::{Backoff, CrashWindow};
pub use process::{
    Exit, ExitStatus, Input, LineSink, Running, Spec, StopReason, Stream, kill_group,
};
pub use user::{Identity, resolve_identity};

/// From now on, task processes start with `posix_spawn` (on a blocking
/// thread) instead of the clone of [`Spec::start`]: the fallback on other
/// architectures and old kernels, which its tests exercise here too.
#[doc(hidden)]
pub fn use_posix_spawn() {
    launch::disable();
}
