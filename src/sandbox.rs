//! Enforcement for agent children: privilege drop, no_new_privs, capability bounding
//! set, Landlock and seccomp, applied in one order between fork and exec.
