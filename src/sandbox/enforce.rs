//! The enforcement steps a child takes between fork and exec, in one straight line. They
//! run in a forked copy of a multithreaded process, so they only read what `prepare` built
//! and make raw system calls through [`Syscalls`]: no allocation, no locks, no path lookups.
//! A recording fake of the trait lets a unit test check the order without root.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use seccompiler::{BpfProgram, sock_filter};

/// Everything the steps need, resolved by `ChildSandbox::prepare` and shared by all spawns.
#[derive(Debug)]
pub struct Steps {
    /// Supplementary groups (the primary group included).
    pub groups: Vec<libc::gid_t>,
    /// Real, effective and saved gid.
    pub gid: libc::gid_t,
    /// Real, effective and saved uid.
    pub uid: libc::uid_t,
    /// The highest capability number of the running kernel (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    /// The filled Landlock ruleset, when the policy lists paths.
    pub landlock: Option<OwnedFd>,
    /// The compiled seccomp filters, installed in this order; empty when seccomp is off.
    pub seccomp: Vec<BpfProgram>,
}

/// The first descriptor a child does not keep: it gets stdin, stdout and stderr only.
pub const FIRST_UNKEPT_FD: u32 = 3;

/// The system calls of the steps; [`super::syscalls::Real`] makes them, tests record them.
pub trait Syscalls {
    /// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: every descriptor from `first` on
    /// closes at exec.
    fn close_on_exec_from(&mut self, first: u32) -> io::Result<()>;
    /// `setgroups(2)`.
    fn setgroups(&mut self, groups: &[libc::gid_t]) -> io::Result<()>;
    /// `PR_CAPBSET_DROP` for every capability up to `last_cap`.
    fn drop_bounding_set(&mut self, last_cap: u32) -> io::Result<()>;
    /// Whether `PR_CAPBSET_READ` reports no capability at all.
    fn bounding_set_is_empty(&mut self) -> io::Result<bool>;
    /// Empties the ambient and inheritable sets.
    fn clear_ambient_and_inheritable(&mut self) -> io::Result<()>;
    /// `setresgid(gid, gid, gid)`.
    fn setresgid(&mut self, gid: libc::gid_t) -> io::Result<()>;
    /// `setresuid(uid, uid, uid)`.
    fn setresuid(&mut self, uid: libc::uid_t) -> io::Result<()>;
    /// `PR_SET_NO_NEW_PRIVS`.
    fn no_new_privs(&mut self) -> io::Result<()>;
    /// `landlock_restrict_self(ruleset, 0)`.
    fn landlock_restrict_self(&mut self, ruleset: BorrowedFd<'_>) -> io::Result<()>;
    /// Installs one seccomp filter.
    fn seccomp(&mut self, program: &[sock_filter]) -> io::Result<()>;
}

/// The step that failed and why.
#[derive(Debug)]
pub struct Failed {
    /// The step's name, static so that reporting it needs no allocation.
    pub step: &'static str,
    /// The system call's error.
    pub error: io::Error,
}

fn at(step: &'static str) -> impl FnOnce(io::Error) -> Failed {
    move |error| Failed { step, error }
}

/// Applies every step, in the one order that works; the first failure stops the spawn.
/// Without `steps` (nested mode, nothing enforced) only step 0 runs.
pub fn enforce(steps: Option<&Steps>, sys: &mut impl Syscalls) -> Result<(), Failed> {
    // 0. Descriptors: whatever the supervisor inherited or opened without close-on-exec
    //    (a terminal, a socket, another child's pty) must not reach a child, sandboxed or
    //    not, so this step comes before the early return for nested mode. Marking instead
    //    of closing: std reports exec failures through a close-on-exec pipe that must stay
    //    open until exec, and so must the Landlock ruleset used in step 6. It needs no
    //    privilege, so it may come first, and must come before seccomp (step 7), which a
    //    profile could make refuse close_range.
    sys.close_on_exec_from(FIRST_UNKEPT_FD).map_err(at("mark descriptors close-on-exec (close_range)"))?;
    let Some(steps) = steps else { return Ok(()) };
    // 1. Supplementary groups first: setgroups needs CAP_SETGID, which the uid change
    //    below takes away, and the supervisor's own groups (root's) must not leak.
    sys.setgroups(&steps.groups).map_err(at("setgroups"))?;
    // 2. Capabilities while still root: PR_CAPBSET_DROP needs CAP_SETPCAP. An empty bounding
    //    set means no later exec (setuid binary, file capabilities) can regain any; the set
    //    is read back so a kernel or runtime that ignored a drop fails the spawn.
    sys.drop_bounding_set(steps.last_cap).map_err(at("drop capability bounding set"))?;
    if !sys.bounding_set_is_empty().map_err(at("read capability bounding set"))? {
        return Err(Failed {
            step: "capability bounding set not empty",
            error: io::Error::from_raw_os_error(libc::EPERM),
        });
    }
    sys.clear_ambient_and_inheritable().map_err(at("clear ambient and inheritable capabilities"))?;
    // 3. The gid before the uid: setresgid needs CAP_SETGID, gone once the uid is not 0.
    sys.setresgid(steps.gid).map_err(at("setresgid"))?;
    // 4. The uid: real, effective and saved all change, so there is no way back to root;
    //    the kernel clears the permitted and effective capabilities here.
    sys.setresuid(steps.uid).map_err(at("setresuid"))?;
    // 5. no_new_privs: exec can no longer grant privileges (setuid bits, file capabilities),
    //    and it is what allows an unprivileged Landlock and seccomp below.
    sys.no_new_privs().map_err(at("no_new_privs"))?;
    // 6. Landlock after no_new_privs (required without CAP_SYS_ADMIN) and before seccomp, so
    //    a profile may block the Landlock calls without breaking this step.
    if let Some(ruleset) = &steps.landlock {
        sys.landlock_restrict_self(ruleset.as_fd()).map_err(at("landlock_restrict_self"))?;
    }
    // 7. seccomp last: the filter judges every later call, so nothing of ours may follow it
    //    except the exec itself (which a profile must allow).
    for program in &steps.seccomp {
        sys.seccomp(program).map_err(at("seccomp"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each call; fails the named call, or reports a non-empty bounding set.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail: Option<&'static str>,
        bounding_left: bool,
    }

    impl Recorder {
        fn call(&mut self, name: &'static str, detail: String) -> io::Result<()> {
            self.calls.push(format!("{name}{detail}"));
            if self.fail == Some(name) { Err(io::Error::from_raw_os_error(libc::EPERM)) } else { Ok(()) }
        }
    }

    impl Syscalls for Recorder {
        fn close_on_exec_from(&mut self, first: u32) -> io::Result<()> {
            self.call("close_on_exec_from", format!("({first})"))
        }
        fn setgroups(&mut self, groups: &[libc::gid_t]) -> io::Result<()> {
            self.call("setgroups", format!("{groups:?}"))
        }
        fn drop_bounding_set(&mut self, last_cap: u32) -> io::Result<()> {
            self.call("drop_bounding_set", format!("({last_cap})"))
        }
        fn bounding_set_is_empty(&mut self) -> io::Result<bool> {
            self.call("bounding_set_is_empty", String::new()).map(|()| !self.bounding_left)
        }
        fn clear_ambient_and_inheritable(&mut self) -> io::Result<()> {
            self.call("clear_ambient_and_inheritable", String::new())
        }
        fn setresgid(&mut self, gid: libc::gid_t) -> io::Result<()> {
            self.call("setresgid", format!("({gid})"))
        }
        fn setresuid(&mut self, uid: libc::uid_t) -> io::Result<()> {
            self.call("setresuid", format!("({uid})"))
        }
        fn no_new_privs(&mut self) -> io::Result<()> {
            self.call("no_new_privs", String::new())
        }
        fn landlock_restrict_self(&mut self, _: BorrowedFd<'_>) -> io::Result<()> {
            self.call("landlock_restrict_self", String::new())
        }
        fn seccomp(&mut self, program: &[sock_filter]) -> io::Result<()> {
            self.call("seccomp", format!("({})", program.len()))
        }
    }

    fn steps(landlock: bool) -> Steps {
        let ruleset = landlock.then(|| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let filter = |n| vec![sock_filter { code: 6, jt: 0, jf: 0, k: 0 }; n];
        Steps {
            groups: vec![100, 200],
            gid: 100,
            uid: 1000,
            last_cap: 40,
            landlock: ruleset,
            seccomp: vec![filter(1), filter(2)],
        }
    }

    #[test]
    fn steps_run_in_the_documented_order() {
        let mut rec = Recorder::default();
        enforce(Some(&steps(true)), &mut rec).unwrap();
        let expected = [
            "close_on_exec_from(3)",
            "setgroups[100, 200]",
            "drop_bounding_set(40)",
            "bounding_set_is_empty",
            "clear_ambient_and_inheritable",
            "setresgid(100)",
            "setresuid(1000)",
            "no_new_privs",
            "landlock_restrict_self",
            "seccomp(1)",
            "seccomp(2)",
        ];
        assert_eq!(rec.calls, expected);
    }

    #[test]
    fn no_ruleset_skips_only_landlock() {
        let mut rec = Recorder::default();
        enforce(Some(&steps(false)), &mut rec).unwrap();
        assert!(!rec.calls.iter().any(|c| c.starts_with("landlock")));
        assert_eq!(rec.calls.len(), 10);
    }

    #[test]
    fn without_steps_only_the_descriptors_are_marked() {
        let mut rec = Recorder::default();
        enforce(None, &mut rec).unwrap();
        assert_eq!(rec.calls, ["close_on_exec_from(3)"]);
    }

    #[test]
    fn descriptors_are_marked_before_anything_else_and_a_failure_stops_the_spawn() {
        let mut rec = Recorder { fail: Some("close_on_exec_from"), ..Recorder::default() };
        let failed = enforce(Some(&steps(true)), &mut rec).unwrap_err();
        assert_eq!(failed.step, "mark descriptors close-on-exec (close_range)");
        assert_eq!(rec.calls, ["close_on_exec_from(3)"], "no identity change, no filter after the failure");
    }

    #[test]
    fn a_failing_step_stops_everything_after_it() {
        let mut rec = Recorder { fail: Some("setresgid"), ..Recorder::default() };
        let failed = enforce(Some(&steps(true)), &mut rec).unwrap_err();
        assert_eq!((failed.step, failed.error.raw_os_error()), ("setresgid", Some(libc::EPERM)));
        assert_eq!(rec.calls.last().map(String::as_str), Some("setresgid(100)"));
    }

    #[test]
    fn a_bounding_set_that_stays_non_empty_fails_before_the_uid_changes() {
        let mut rec = Recorder { bounding_left: true, ..Recorder::default() };
        let failed = enforce(Some(&steps(true)), &mut rec).unwrap_err();
        assert_eq!(failed.step, "capability bounding set not empty");
        assert_eq!(rec.calls.last().map(String::as_str), Some("bounding_set_is_empty"));
    }
}
