//! seccomp profiles: seccompiler's JSON format (a map of named filters, each rule with a
//! `comment` saying why), compiled to BPF in the supervisor before any fork. Every filter
//! of a profile is installed (stacked) in name order; the kernel applies the strictest
//! verdict, which lets the baseline answer EPERM for most calls but ENOSYS for clone3.
//! On x86_64 a small guard filter is added to any profile: x32 syscall numbers
//! (bit 30 set) would otherwise slip past a deny list written for the native numbers.
//! Calls made with another architecture's convention (32-bit `int 0x80`) kill the process
//! (seccompiler's architecture check).

use std::collections::BTreeMap;
use std::path::Path;

use seccompiler::{BpfProgram, TargetArch, sock_filter};

use super::SandboxError;
use crate::config::SeccompChoice;

/// The built-in baseline profile (`--seccomp baseline`).
pub const BASELINE: &str = include_str!("../../policies/seccomp-baseline.json");
/// How the baseline is named in messages.
const BASELINE_NAME: &str = "policies/seccomp-baseline.json (built in)";

/// Compiles the filters for `choice`; empty when seccomp is off.
pub fn prepare(choice: &SeccompChoice) -> Result<Vec<BpfProgram>, SandboxError> {
    match choice {
        SeccompChoice::Off => Ok(Vec::new()),
        SeccompChoice::Baseline => compile(BASELINE, Path::new(BASELINE_NAME)),
        SeccompChoice::Profile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| SandboxError::SeccompRead { path: path.clone(), source })?;
            compile(&text, path)
        }
    }
}

/// Compiles a profile's text; `path` names it in errors.
pub fn compile(text: &str, path: &Path) -> Result<Vec<BpfProgram>, SandboxError> {
    let invalid = |reason: String| SandboxError::SeccompProfile { path: path.to_path_buf(), reason };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| invalid(format!("seccomp filters cannot be built for {}", std::env::consts::ARCH)))?;
    let filters: BTreeMap<String, BpfProgram> = seccompiler::compile_from_json(text.as_bytes(), arch)
        .map_err(|e| invalid(e.to_string()))?
        .into_iter()
        .collect();
    if filters.is_empty() {
        return Err(invalid("the profile defines no filter; expected {\"name\": {\"mismatch_action\": ..., \"match_action\": ..., \"filter\": [...]}}".into()));
    }
    let mut programs: Vec<BpfProgram> = x32_guard(arch).into_iter().collect();
    programs.extend(filters.into_values());
    Ok(programs)
}

/// On x86_64: x32 calls (`nr | 0x4000_0000`, same audit arch) fail with EPERM.
fn x32_guard(arch: TargetArch) -> Option<BpfProgram> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const ARCH_OFFSET: u32 = 4; // offsetof(struct seccomp_data, arch)
    const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    (arch == TargetArch::x86_64).then(|| {
        vec![
            op(LD_W_ABS, 0, 0, ARCH_OFFSET),
            op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64), // another arch: allow (the profile's own check kills it)
            op(LD_W_ABS, 0, 0, NR_OFFSET),
            op(JGE_K, 0, 1, X32_SYSCALL_BIT),
            op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn baseline_compiles_and_every_rule_says_why() {
        let programs = prepare(&SeccompChoice::Baseline).unwrap();
        assert_eq!(programs.len(), 2 + usize::from(cfg!(target_arch = "x86_64")));
        let doc: serde_json::Value = serde_json::from_str(BASELINE).unwrap();
        let mut rules = 0;
        for (name, filter) in doc.as_object().unwrap() {
            for rule in filter["filter"].as_array().unwrap() {
                rules += 1;
                let why = rule["comment"].as_str().unwrap_or_default();
                assert!(why.len() > 20, "{name}: rule for {} has no comment saying why", rule["syscall"]);
            }
        }
        assert!(rules > 30, "{rules}");
    }

    #[test]
    fn the_baseline_refuses_terminal_injection_on_the_low_32_bits_of_the_request() {
        let doc: serde_json::Value = serde_json::from_str(BASELINE).unwrap();
        let rules = doc["deny_with_eperm"]["filter"].as_array().unwrap();
        for request in [libc::TIOCSTI, libc::TIOCLINUX] {
            let rule = rules
                .iter()
                .find(|r| r["syscall"] == "ioctl" && r["args"][0]["val"] == u64::from(request as u32))
                .unwrap_or_else(|| panic!("no ioctl rule for {request:#x}"));
            let arg = &rule["args"][0];
            assert_eq!(
                (arg["index"].as_u64(), arg["type"].as_str(), arg["op"].as_str()),
                (Some(1), Some("dword"), Some("eq"))
            );
            assert_eq!(rule["args"].as_array().unwrap().len(), 1, "the request alone decides");
        }
    }

    #[test]
    fn off_compiles_nothing() {
        assert!(prepare(&SeccompChoice::Off).unwrap().is_empty());
    }

    #[test]
    fn a_missing_profile_file_is_named() {
        let path = PathBuf::from("/no/such/dir/profile.json");
        let err = prepare(&SeccompChoice::Profile(path)).unwrap_err().to_string();
        assert!(err.contains("/no/such/dir/profile.json") && err.contains("--seccomp"), "{err}");
    }

    #[test]
    fn a_bad_profile_says_what_is_wrong() {
        let bad = r#"{"f": {"mismatch_action": "allow", "match_action": {"errno": 1}, "filter": [{"syscall": "no_such_call"}]}}"#;
        let err = compile(bad, Path::new("/etc/p.json")).unwrap_err().to_string();
        assert!(err.contains("/etc/p.json") && err.contains("no_such_call"), "{err}");
        let err = compile("{}", Path::new("/etc/p.json")).unwrap_err().to_string();
        assert!(err.contains("no filter"), "{err}");
    }
}
