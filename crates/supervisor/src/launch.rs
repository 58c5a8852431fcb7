//! Starting a task process without waiting for its `exec`.
//!
//! `posix_spawn` clones with `CLONE_VM | CLONE_VFORK`: the calling thread
//! sleeps until the child has exec'd, and on a busy machine the child first
//! waits for a CPU. So the daemon started its task processes on blocking
//! threads, and every start cost two hand-overs between threads (to the
//! blocking thread and back): on the virtual machine of docs/PERFORMANCE.md
//! (run V) about a fifth of the daemon's CPU per task.
//!
//! Here the child is cloned with `CLONE_VM` alone: it shares the daemon's
//! memory until it execs, runs on a stack of its own, and the caller goes on
//! at once. The child therefore must not touch anything the daemon's threads
//! may change, nor the caller's thread-local storage (`errno` included): it
//! reads only [`ChildArgs`], built before the clone and kept unchanged until
//! the child has ended, and makes raw system calls. It starts with every
//! signal blocked (the caller blocks them around the clone), resets every
//! signal the daemon catches (and SIGPIPE, which it ignores) to its default
//! before it unblocks them, moves its descriptors into place, leads a process
//! group of its own and execs. Should the exec fail, it leaves the error
//! number in [`ChildArgs`] and exits with 127; the error is read when the
//! process is reaped. The kernel hands back a pidfd from the clone itself.
//!
//! Built for x86-64 and AArch64 Linux; elsewhere, on kernels without
//! `CLONE_PIDFD` (before 5.2) and where a seccomp filter refuses the clone,
//! the caller uses `posix_spawn`.

use std::ffi::{CStr, CString, c_int, c_long, c_void};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The child's stack: small, since the child only resets its signals,
/// moves three descriptors and execs. A guard page lies below it.
const STACK_SIZE: usize = 64 * 1024;
/// Stacks kept for reuse (more are unmapped when their process ends).
const STACKS_KEPT: usize = 64;

/// False once a clone has been refused (EINVAL: a kernel without
/// `CLONE_PIDFD`; EPERM or ENOSYS: a seccomp filter), or a test said so.
static AVAILABLE: AtomicBool = AtomicBool::new(true);

/// Never use this way again.
pub(crate) fn disable() {
    AVAILABLE.store(false, Ordering::Relaxed);
}

/// Whether this way of starting a process can be used.
pub(crate) fn available() -> bool {
    AVAILABLE.load(Ordering::Relaxed)
}

/// What the child reads: pointers into strings that [`Launched`] owns (or
/// that live as long as the program).
#[derive(Debug)]
struct ChildArgs {
    /// Null-terminated list of paths to try, in order.
    paths: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Become descriptors 0, 1 and 2.
    fds: [c_int; 3],
    /// Where the child leaves the error number of a failed exec (it shares
    /// this memory) before it exits.
    exec_errno: AtomicI32,
}

/// A child started by [`launch`]: what it may still read (its arguments and
/// its stack) and where an exec error would come from. Dropped only once
/// the process has ended.
#[derive(Debug)]
pub(crate) struct Launched {
    pid: libc::pid_t,
    args: Box<ChildArgs>,
    _strings: [Vec<CString>; 3],
    _stack: Stack,
}

// SAFETY: the raw pointers in `args` point into `_strings` (a CString's
// bytes stay where they are when it moves) or into strings that live as
// long as the program; none of them is ever written through.
unsafe impl Send for Launched {}

impl Launched {
    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The exec's error number, once the process has been reaped: None when
    /// it exec'd.
    pub(crate) fn exec_error(&self) -> Option<i32> {
        // The child stored it before it exited, and the reap came after.
        match self.args.exec_errno.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }
}

/// Starts the first of `paths` that can be exec'd, with `argv` and the
/// environment `env_base` followed by `env_own`, descriptors `fds` as its
/// stdin, stdout and stderr (none of them 0, 1 or 2), in a process group of
/// its own. Returns it and its pidfd.
pub(crate) fn launch(
    paths: Vec<CString>,
    argv: Vec<CString>,
    env_base: &[&'static CStr],
    env_own: Vec<CString>,
    fds: [RawFd; 3],
) -> io::Result<(Launched, OwnedFd)> {
    let nul = std::ptr::null::<libc::c_char>();
    let args = Box::new(ChildArgs {
        paths: paths.iter().map(|p| p.as_ptr()).chain([nul]).collect(),
        argv: argv.iter().map(|a| a.as_ptr()).chain([nul]).collect(),
        envp: env_base
            .iter()
            .map(|e| e.as_ptr())
            .chain(env_own.iter().map(|e| e.as_ptr()))
            .chain([nul])
            .collect(),
        fds,
        exec_errno: AtomicI32::new(0),
    });
    let stack = Stack::take()?;
    let mut pidfd: c_int = -1;
    // Every signal blocked in the child from its first instruction (glibc's
    // sigprocmask would leave two of its own open): it shares the daemon's
    // memory, so none of the daemon's handlers may run in it.
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads and writes 8 bytes at these addresses.
    unsafe {
        syscall4(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &all as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8,
        )
    };
    // SAFETY: child_main only reads `args` (alive and unchanged until the
    // returned Launched is dropped, after the process has ended) and makes
    // raw system calls on its own stack (likewise kept); CLONE_PIDFD stores
    // the pidfd into `pidfd`.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            &*args as *const ChildArgs as *mut c_void,
            &mut pidfd as *mut c_int,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: as above.
    unsafe {
        syscall4(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &old as *const u64 as usize,
            0,
            8,
        )
    };
    if pid < 0 {
        if matches!(
            clone_error.raw_os_error(),
            Some(libc::EINVAL | libc::EPERM | libc::ENOSYS)
        ) {
            AVAILABLE.store(false, Ordering::Relaxed);
        }
        return Err(clone_error);
    }
    // SAFETY: CLONE_PIDFD put a new descriptor, owned by nobody else, there.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The child makes its own process group, but perhaps not before the
    // caller signals the group (a task stopped as soon as it started): so
    // the parent makes it too. Once the child has exec'd this fails
    // (EACCES), and by then the group is there.
    let _ = nix::unistd::setpgid(
        nix::unistd::Pid::from_raw(pid),
        nix::unistd::Pid::from_raw(pid),
    );
    Ok((
        Launched {
            pid,
            args,
            _strings: [paths, argv, env_own],
            _stack: stack,
        },
        pidfd,
    ))
}

/// The child, between the clone and the exec. Only raw system calls: the
/// libc wrappers would set `errno`, which lives in the parent thread's
/// storage.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the ChildArgs that `launch` keeps alive and unchanged.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let mut sig: usize = 1;
    while sig <= 64 {
        if sig != libc::SIGKILL as usize && sig != libc::SIGSTOP as usize {
            // The kernel's struct sigaction: handler, flags, restorer, mask.
            let mut old = [0usize; 4];
            // SAFETY: rt_sigaction writes at most 32 bytes into `old`.
            let r =
                unsafe { syscall4(libc::SYS_rt_sigaction, sig, 0, old.as_mut_ptr() as usize, 8) };
            let caught = r == 0 && old[0] != libc::SIG_DFL && old[0] != libc::SIG_IGN;
            if caught || sig == libc::SIGPIPE as usize {
                let dfl = [0usize; 4];
                // SAFETY: rt_sigaction reads 32 bytes from `dfl`.
                unsafe { syscall4(libc::SYS_rt_sigaction, sig, dfl.as_ptr() as usize, 0, 8) };
            }
        }
        sig += 1;
    }
    let mut error: isize = 0;
    for (to, fd) in a.fds.iter().enumerate() {
        // SAFETY: dup3 on descriptors; no memory is touched.
        let r = unsafe { syscall4(libc::SYS_dup3, *fd as usize, to, 0, 0) };
        if r < 0 {
            error = r;
        }
    }
    if error == 0 {
        // SAFETY: setpgid(0, 0) touches no memory.
        error = unsafe { syscall4(libc::SYS_setpgid, 0, 0, 0, 0) }.min(0);
    }
    if error == 0 {
        let none: u64 = 0;
        // SAFETY: rt_sigprocmask reads 8 bytes from `none`.
        unsafe {
            syscall4(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &none as *const u64 as usize,
                0,
                8,
            )
        };
        let mut p = a.paths.as_ptr();
        // SAFETY: `paths` ends with a null pointer; every entry before it is
        // a NUL-terminated string, as are argv and envp.
        unsafe {
            while !(*p).is_null() {
                let r = syscall4(
                    libc::SYS_execve,
                    *p as usize,
                    a.argv.as_ptr() as usize,
                    a.envp.as_ptr() as usize,
                    0,
                );
                // As execvp: a permission error is kept over a later
                // not-found.
                if error != -(libc::EACCES as isize) {
                    error = r;
                }
                p = p.add(1);
            }
        }
    }
    // No path to try at all: not found.
    let errno = if error < 0 {
        -error
    } else {
        libc::ENOENT as isize
    };
    // An atomic store is a plain store: no call, no errno.
    a.exec_errno.store(errno as i32, Ordering::Release);
    // SAFETY: exit_group ends this process (a thread group of its own) and
    // does not return.
    unsafe { syscall4(libc::SYS_exit_group, 127, 0, 0, 0) };
    127
}

/// A system call with up to four arguments, without `errno`: the result, or
/// minus the error number.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn syscall4(n: c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for system call `n`.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn syscall4(n: c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes arguments valid for system call `n`.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a as isize => ret,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            options(nostack),
        );
    }
    ret
}

/// A child's stack: an anonymous mapping with a guard page at its foot.
#[derive(Debug)]
struct Stack {
    base: usize,
}

static STACKS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

impl Stack {
    fn take() -> io::Result<Stack> {
        if let Some(base) = STACKS.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(Stack { base });
        }
        // SAFETY: a fresh anonymous mapping, owned by the Stack.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Stack::size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page_size(), libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the mapping just made, used by nobody.
            unsafe { libc::munmap(base, Stack::size()) };
            return Err(e);
        }
        Ok(Stack {
            base: base as usize,
        })
    }

    /// The mapping's size: the stack and its guard page.
    fn size() -> usize {
        STACK_SIZE + page_size()
    }

    /// The top of the stack (it grows down), page-aligned.
    fn top(&self) -> *mut c_void {
        (self.base + Stack::size()) as *mut c_void
    }
}

/// The size of a page (4 KiB on x86-64, up to 64 KiB on AArch64).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut kept = STACKS.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < STACKS_KEPT {
            kept.push(self.base);
        } else {
            // SAFETY: the mapping this Stack owns; its child has ended.
            unsafe { libc::munmap(self.base as *mut c_void, Stack::size()) };
        }
    }
}
