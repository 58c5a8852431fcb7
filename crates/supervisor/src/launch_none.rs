//! Where the clone of `launch.rs` is not built (architectures other than
//! x86-64 and AArch64): it is never available, and task processes start
//! with `posix_spawn`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{OwnedFd, RawFd};

/// Nothing to turn off.
pub(crate) fn disable() {}

/// Never.
pub(crate) fn available() -> bool {
    false
}

/// No process is ever started this way.
#[derive(Debug)]
pub(crate) enum Launched {}

impl Launched {
    pub(crate) fn pid(&self) -> libc::pid_t {
        match *self {}
    }

    pub(crate) fn exec_error(&self) -> Option<i32> {
        match *self {}
    }
}

/// Not built here (see [`available`]).
pub(crate) fn launch(
    _paths: Vec<CString>,
    _argv: Vec<CString>,
    _env_base: &[&'static CStr],
    _env_own: Vec<CString>,
    _fds: [RawFd; 3],
) -> io::Result<(Launched, OwnedFd)> {
    Err(io::ErrorKind::Unsupported.into())
}
