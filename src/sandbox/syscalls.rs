//! The real [`Syscalls`]: raw system calls only, safe to make in a forked child of a
//! multithreaded process (async-signal-safe, no allocation). Raw `syscall(2)` rather than
//! the libc wrappers for the id changes: glibc's wrappers broadcast to all threads, which
//! a forked child does not have.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use seccompiler::sock_filter;

use super::enforce::Syscalls;

/// Makes the calls for real, on the calling (child) process.
pub struct Real;

/// `-1` means failure with `errno`; anything else success.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

#[allow(unsafe_code)]
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_long> {
    // SAFETY: prctl with integer arguments only; no memory is passed to the kernel.
    check(unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) }.into())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two `CapData`, capabilities 0-31 and 32-63.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11 or later.
#[allow(unsafe_code)]
fn close_range_cloexec(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: integer arguments only; the flag marks descriptors, it closes none.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) })
        .map(drop)
}

/// Whether this kernel has `CLOSE_RANGE_CLOEXEC`: asked in the supervisor, before any
/// child, on a range that holds no descriptor (older kernels answer EINVAL or ENOSYS).
pub fn probe_close_range() -> io::Result<()> {
    close_range_cloexec(libc::c_uint::MAX)
}

#[allow(unsafe_code)]
impl Syscalls for Real {
    fn close_on_exec_from(&mut self, first: u32) -> io::Result<()> {
        close_range_cloexec(first)
    }

    fn setgroups(&mut self, groups: &[libc::gid_t]) -> io::Result<()> {
        // SAFETY: the kernel reads `groups.len()` gids from a live slice.
        check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
    }

    fn drop_bounding_set(&mut self, last_cap: u32) -> io::Result<()> {
        for cap in 0..=last_cap {
            prctl(libc::PR_CAPBSET_DROP, cap.into())?;
        }
        Ok(())
    }

    fn bounding_set_is_empty(&mut self) -> io::Result<bool> {
        // Past the kernel's last capability PR_CAPBSET_READ fails with EINVAL: the end.
        for cap in 0..64u32 {
            match prctl(libc::PR_CAPBSET_READ, cap.into()) {
                Ok(0) => {}
                Ok(_) => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn clear_ambient_and_inheritable(&mut self) -> io::Result<()> {
        prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)?;
        let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        // SAFETY: header and a two-element data array of the v3 layout, both live and writable.
        check(unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) })?;
        for d in &mut data {
            d.inheritable = 0;
        }
        // SAFETY: as above; lowering the inheritable set needs no privilege.
        check(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) }).map(drop)
    }

    fn setresgid(&mut self, gid: libc::gid_t) -> io::Result<()> {
        // SAFETY: integer arguments only.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
    }

    fn setresuid(&mut self, uid: libc::uid_t) -> io::Result<()> {
        // SAFETY: integer arguments only.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
    }

    fn no_new_privs(&mut self) -> io::Result<()> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
    }

    fn landlock_restrict_self(&mut self, ruleset: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: an open Landlock ruleset fd (borrowed, stays open) and no flags.
        check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) }).map(drop)
    }

    fn seccomp(&mut self, program: &[sock_filter]) -> io::Result<()> {
        seccompiler::apply_filter(program).map_err(|e| match e {
            seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
            _ => io::Error::from_raw_os_error(libc::EINVAL),
        })
    }
}

/// Writes `openshell-sandbox: child enforcement failed at <step>` to stderr, without
/// allocating; the errno itself reaches the parent as the spawn error.
#[allow(unsafe_code)]
pub fn report_failure(step: &str) {
    for part in [&b"openshell-sandbox: child enforcement failed at "[..], step.as_bytes(), b"\n"] {
        // SAFETY: writes a live byte slice to fd 2; a short or failed write only loses the note.
        let _ = unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
}
