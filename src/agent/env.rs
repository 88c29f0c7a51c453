//! The child environment (docs/architecture.md, "Agent mode", step 5): built from nothing
//! for every child, from the child's identity, the proxy and CA variables of the supervisor's own
//! environment, and the placeholders of `child-env.json` (re-read when it changes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::sandbox::ChildSandbox;
use crate::volume::{self, CHILD_ENV_FILE, ChildEnv};

/// `PATH` of every child.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables copied from the supervisor's environment when set: the proxy and the CA.
pub const PROPAGATED: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "REQUESTS_CA_BUNDLE",
];

/// The message git users see when they try SSH.
pub const SSH_DISABLED: &str = "SSH disabled: use HTTPS";

/// `GIT_SSH_COMMAND`: git appends the host and command; the inner shell takes them as its
/// positional parameters and ignores them.
pub const GIT_SSH_COMMAND: &str = "sh -c 'echo \"SSH disabled: use HTTPS\" >&2; exit 1' git-ssh-disabled";

/// The shell that runs children's commands when the account's own cannot.
pub const FALLBACK_SHELL: &str = "/bin/sh";

/// Who a child runs as, for `HOME`, `USER` and `SHELL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// Home directory.
    pub home: PathBuf,
    /// The shell that runs commands (`shell -c`) and SSH shells: the passwd entry's, or
    /// [`FALLBACK_SHELL`] when that one cannot run commands (see [`command_shell`]).
    pub shell: PathBuf,
}

impl Identity {
    /// The sandbox's child user, or the supervisor's own passwd entry when children run
    /// as the supervisor (nested mode). Called once, at startup: a replaced login shell
    /// is logged here.
    pub fn of(sandbox: &ChildSandbox) -> Self {
        let (user, home, shell) = match sandbox.user() {
            Some(user) => (user.name.clone(), user.home.clone(), user.shell.clone()),
            None => {
                let uid = nix::unistd::getuid();
                match nix::unistd::User::from_uid(uid) {
                    Ok(Some(user)) => (user.name, user.dir, user.shell),
                    _ => (uid.to_string(), "/".into(), FALLBACK_SHELL.into()),
                }
            }
        };
        let shell = command_shell(&user, shell);
        Identity { user, home, shell }
    }

    /// The shell children are started with.
    pub fn shell(&self) -> &Path {
        &self.shell
    }
}

/// The account's login shell when it can run commands, else [`FALLBACK_SHELL`], logged.
/// The supervisor runs the agent's commands, so an account that refuses logins (`nobody`
/// with `nologin`) still runs them, as OpenShell's own supervisor does.
pub fn command_shell(user: &str, shell: PathBuf) -> PathBuf {
    match why_unusable(&shell) {
        None => shell,
        Some(why) => {
            tracing::info!(
                user,
                shell = %shell.display(),
                "the account's login shell {why}: children's commands and SSH shells use {FALLBACK_SHELL}"
            );
            PathBuf::from(FALLBACK_SHELL)
        }
    }
}

/// Why `shell` cannot run commands, or `None` when it can: empty, not absolute, a login
/// refuser (`nologin`, `false`, whatever its directory), missing, or not an executable file.
fn why_unusable(shell: &Path) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    if shell.as_os_str().is_empty() {
        return Some("is empty");
    }
    if !shell.is_absolute() {
        return Some("is not an absolute path");
    }
    if matches!(shell.file_name().and_then(|n| n.to_str()), Some("nologin" | "false")) {
        return Some("refuses logins");
    }
    match std::fs::metadata(shell) {
        Err(_) => Some("does not exist"),
        Ok(meta) if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 => Some("is not executable"),
        Ok(_) => None,
    }
}

/// Whether a `child-env.json` name may reach a child: never a control variable, never a
/// loader variable, never one the supervisor sets itself.
fn placeholder_allowed(name: &str) -> bool {
    !(name.starts_with("OPENSHELL_") || name.starts_with("LD_") || FIXED.contains(&name))
}

/// Names the supervisor sets itself (placeholders cannot replace them).
const FIXED: &[&str] = &[
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PATH",
    "TERM",
    "OPENSHELL_SANDBOX",
    "GIT_SSH_COMMAND",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_VALUE_0",
];

/// The environment of one child. `term` is the SSH pty request's terminal type (`dumb`
/// when absent); `supervisor` looks a variable up in the supervisor's environment.
pub fn build(
    identity: &Identity,
    term: Option<&str>,
    supervisor: impl Fn(&str) -> Option<String>,
    placeholders: &ChildEnv,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (name, value) in placeholders {
        if placeholder_allowed(name) {
            env.insert(name.clone(), value.clone());
        }
    }
    for name in PROPAGATED {
        if let Some(value) = supervisor(name) {
            env.insert((*name).to_owned(), value);
        }
    }
    let fixed = [
        ("HOME", identity.home.display().to_string()),
        ("USER", identity.user.clone()),
        ("LOGNAME", identity.user.clone()),
        ("SHELL", identity.shell().display().to_string()),
        ("PATH", DEFAULT_PATH.to_owned()),
        ("TERM", term.filter(|t| !t.is_empty()).unwrap_or("dumb").to_owned()),
        ("OPENSHELL_SANDBOX", "1".to_owned()),
        ("GIT_SSH_COMMAND", GIT_SSH_COMMAND.to_owned()),
        ("GIT_CONFIG_COUNT", "1".to_owned()),
        ("GIT_CONFIG_KEY_0", "protocol.ssh.allow".to_owned()),
        ("GIT_CONFIG_VALUE_0", "never".to_owned()),
    ];
    env.extend(fixed.map(|(k, v)| (k.to_owned(), v)));
    env
}

/// Builds child environments: the identity and propagated values are fixed at startup, the
/// placeholders are re-read when `child-env.json` changes.
#[derive(Debug)]
pub struct ChildEnvSource {
    identity: Identity,
    propagated: BTreeMap<String, String>,
    tls_dir: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    modified: Option<SystemTime>,
    placeholders: ChildEnv,
}

impl ChildEnvSource {
    /// Captures the propagated variables from the supervisor's environment now.
    pub fn new(identity: Identity, tls_dir: &Path) -> Self {
        let propagated =
            PROPAGATED.iter().filter_map(|n| std::env::var(n).ok().map(|v| ((*n).to_owned(), v))).collect();
        ChildEnvSource { identity, propagated, tls_dir: tls_dir.to_owned(), cache: Mutex::default() }
    }

    /// The identity children get.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The environment of a new child.
    pub fn env(&self, term: Option<&str>) -> BTreeMap<String, String> {
        let placeholders = self.placeholders();
        build(&self.identity, term, |n| self.propagated.get(n).cloned(), &placeholders)
    }

    /// The current placeholders: re-read when the file's mtime changed; a missing file
    /// means none; a malformed one keeps the last good set (with a warning).
    fn placeholders(&self) -> ChildEnv {
        let path = self.tls_dir.join(CHILD_ENV_FILE);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if modified != cache.modified {
            match modified.map(|_| volume::read_child_env(&self.tls_dir)) {
                None => cache.placeholders.clear(),
                Some(Ok(env)) => {
                    tracing::debug!(variables = env.len(), "read {}", path.display());
                    cache.placeholders = env;
                }
                Some(Err(e)) => tracing::warn!("{e}; children keep the previous placeholders"),
            }
            cache.modified = modified;
        }
        cache.placeholders.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity { user: "sandbox".into(), home: "/sandbox".into(), shell: "/bin/bash".into() }
    }

    fn supervisor(name: &str) -> Option<String> {
        match name {
            "HTTP_PROXY" => Some("http://10.0.0.2:3128".into()),
            "https_proxy" => Some("http://10.0.0.2:3128".into()),
            "SSL_CERT_FILE" => Some("/openshell-tls/ca-bundle.pem".into()),
            "OPENSHELL_SANDBOX_TOKEN" | "SECRET" => Some("leak".into()),
            _ => None,
        }
    }

    #[test]
    fn builds_from_nothing_with_identity_proxy_and_git_guards() {
        let placeholders: ChildEnv = [
            ("API_KEY".to_owned(), "openshell:resolve:env:API_KEY".to_owned()),
            ("OPENSHELL_SANDBOX_TOKEN".to_owned(), "x".to_owned()),
            ("PATH".to_owned(), "/evil".to_owned()),
            ("LD_PRELOAD".to_owned(), "/evil.so".to_owned()),
        ]
        .into();
        let env = build(&identity(), Some("xterm-256color"), supervisor, &placeholders);
        assert_eq!(env["HOME"], "/sandbox");
        assert_eq!(env["USER"], "sandbox");
        assert_eq!(env["SHELL"], "/bin/bash");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["TERM"], "xterm-256color");
        assert_eq!(env["OPENSHELL_SANDBOX"], "1");
        assert_eq!(env["HTTP_PROXY"], "http://10.0.0.2:3128");
        assert_eq!(env["https_proxy"], "http://10.0.0.2:3128");
        assert_eq!(env["SSL_CERT_FILE"], "/openshell-tls/ca-bundle.pem");
        assert_eq!(env["API_KEY"], "openshell:resolve:env:API_KEY");
        assert_eq!(env["GIT_CONFIG_KEY_0"], "protocol.ssh.allow");
        assert_eq!(env["GIT_CONFIG_VALUE_0"], "never");
        assert!(env["GIT_SSH_COMMAND"].contains(SSH_DISABLED));
        assert!(!env.contains_key("SECRET"), "only the listed variables are propagated");
        assert!(!env.contains_key("LD_PRELOAD"));
        assert!(!env.contains_key("HTTPS_PROXY"), "unset variables stay unset");
        let control: Vec<_> = env.keys().filter(|k| k.starts_with("OPENSHELL_")).collect();
        assert_eq!(control, ["OPENSHELL_SANDBOX"]);
    }

    #[test]
    fn term_defaults_to_dumb() {
        let env = build(&identity(), None, |_| None, &ChildEnv::new());
        assert_eq!(env["TERM"], "dumb");
    }

    #[test]
    fn shells_that_cannot_run_commands_become_sh() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("zsh");
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refusers = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/opt/x/nologin"];
        let others = ["", "bash", "/no/such/shell", "/etc", not_executable.to_str().unwrap()];
        for shell in refusers.into_iter().chain(others) {
            assert_eq!(command_shell("nobody", shell.into()), Path::new(FALLBACK_SHELL), "{shell:?}");
        }
        assert_eq!(command_shell("u", "/bin/sh".into()), Path::new("/bin/sh"));
        let executable = dir.path().join("nologin.sh");
        std::fs::write(&executable, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&executable, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(command_shell("u", executable.clone()), executable, "only the file name `nologin` refuses");
        let id = Identity { shell: command_shell("nobody", "/usr/sbin/nologin".into()), ..identity() };
        assert_eq!(build(&id, None, |_| None, &ChildEnv::new())["SHELL"], FALLBACK_SHELL);
    }

    #[test]
    fn git_ssh_command_prints_the_message_and_fails() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{GIT_SSH_COMMAND} \"$@\""))
            .args(["git-ssh", "git@example.invalid", "git-upload-pack 'x/y.git'"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), SSH_DISABLED);
    }

    #[test]
    fn placeholders_are_reread_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let source = ChildEnvSource::new(identity(), dir.path());
        assert!(!source.env(None).contains_key("API_KEY"), "no file, no placeholders");
        let first: ChildEnv = [("API_KEY".to_owned(), "one".to_owned())].into();
        volume::write_child_env(dir.path(), &first).unwrap();
        assert_eq!(source.env(None)["API_KEY"], "one");
        let second: ChildEnv = [("API_KEY".to_owned(), "two".to_owned())].into();
        volume::write_child_env(dir.path(), &second).unwrap();
        let file = std::fs::File::options().write(true).open(dir.path().join(CHILD_ENV_FILE)).unwrap();
        file.set_modified(SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(source.env(None)["API_KEY"], "two");
        std::fs::write(dir.path().join(CHILD_ENV_FILE), "{not json").unwrap();
        file.set_modified(SystemTime::now() + std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(source.env(None)["API_KEY"], "two", "a malformed file keeps the last good set");
    }
}
