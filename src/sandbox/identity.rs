//! Resolves `process.run_as_user` / `run_as_group` to the numeric identity children run
//! as, from the user and group databases (nix `User` / `Group` / `getgrouplist`). Root,
//! as user, primary group or supplementary group, is refused.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use super::{ChildUser, SandboxError};
use crate::policy::model::ProcessPolicy;

/// The user children run as when the policy names none.
pub const DEFAULT_USER: &str = "sandbox";
/// Home directory for a numeric uid without a passwd entry.
const FALLBACK_HOME: &str = "/";
/// Login shell for a numeric uid without a passwd entry.
const FALLBACK_SHELL: &str = "/bin/sh";

/// Resolves the child identity for `process`.
pub fn resolve(process: &ProcessPolicy) -> Result<ChildUser, SandboxError> {
    let user_spec = process.run_as_user.as_deref().unwrap_or(DEFAULT_USER);
    let entry = lookup_user(user_spec)?;
    let (name, uid, home, shell, passwd_gid) = match entry {
        Found::Entry(user) => (user.name, user.uid.as_raw(), user.dir, user.shell, Some(user.gid.as_raw())),
        Found::Number(uid) => (uid.to_string(), uid, PathBuf::from(FALLBACK_HOME), PathBuf::from(FALLBACK_SHELL), None),
    };
    if uid == 0 {
        return Err(SandboxError::RootIdentity { field: "process.run_as_user", value: user_spec.to_owned() });
    }
    let gid = match process.run_as_group.as_deref() {
        Some(spec) => lookup_group(spec)?,
        None => passwd_gid.ok_or(SandboxError::NoPrimaryGroup { uid })?,
    };
    if gid == 0 {
        let value = process.run_as_group.clone().unwrap_or_else(|| format!("{name}'s primary group"));
        return Err(SandboxError::RootIdentity { field: "process.run_as_group", value });
    }
    let groups = supplementary_groups(&name, uid, gid, passwd_gid.is_some())?;
    Ok(ChildUser { name, uid, gid, groups, home, shell })
}

enum Found {
    Entry(User),
    Number(u32),
}

/// A name must exist in the user database; a number may lack an entry.
fn lookup_user(spec: &str) -> Result<Found, SandboxError> {
    let lookup_err = |source| SandboxError::Lookup { what: "user", name: spec.to_owned(), source };
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(User::from_uid(Uid::from_raw(uid)).map_err(lookup_err)?.map_or(Found::Number(uid), Found::Entry));
    }
    User::from_name(spec).map_err(lookup_err)?.map(Found::Entry).ok_or_else(|| SandboxError::UnknownIdentity {
        field: "process.run_as_user",
        what: "user",
        name: spec.to_owned(),
    })
}

/// A group name must exist in the group database; a number is taken as is.
fn lookup_group(spec: &str) -> Result<u32, SandboxError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    Group::from_name(spec)
        .map_err(|source| SandboxError::Lookup { what: "group", name: spec.to_owned(), source })?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| SandboxError::UnknownIdentity {
            field: "process.run_as_group",
            what: "group",
            name: spec.to_owned(),
        })
}

/// The user's groups from the group database plus the primary group, root refused.
/// A uid without a passwd entry has only its primary group.
fn supplementary_groups(name: &str, uid: u32, gid: u32, has_entry: bool) -> Result<Vec<u32>, SandboxError> {
    let mut groups = vec![gid];
    if has_entry {
        let cname = CString::new(name).map_err(|_| SandboxError::UnknownIdentity {
            field: "process.run_as_user",
            what: "user",
            name: name.to_owned(),
        })?;
        let listed = getgrouplist(&cname, Gid::from_raw(gid)).map_err(|source| SandboxError::Lookup {
            what: "groups of user",
            name: name.to_owned(),
            source,
        })?;
        groups.extend(listed.into_iter().map(Gid::as_raw));
    }
    groups.sort_unstable();
    groups.dedup();
    if groups.contains(&0) {
        return Err(SandboxError::RootIdentity {
            field: "process.run_as_user",
            value: format!("{name} (uid {uid}) is a member of group root (gid 0)"),
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(user: Option<&str>, group: Option<&str>) -> ProcessPolicy {
        ProcessPolicy { run_as_user: user.map(str::to_owned), run_as_group: group.map(str::to_owned) }
    }

    #[test]
    fn nobody_by_name_and_number_resolve_from_passwd() {
        for spec in ["nobody", "65534"] {
            let user = resolve(&process(Some(spec), None)).expect("nobody exists on Debian");
            assert_eq!((user.name.as_str(), user.uid, user.gid), ("nobody", 65534, 65534));
            assert_eq!(user.groups, vec![65534]);
            assert!(user.shell.is_absolute() && user.home.is_absolute());
        }
    }

    #[test]
    fn numeric_uid_without_entry_gets_defaults_and_needs_a_group() {
        let user = resolve(&process(Some("54321"), Some("nogroup"))).unwrap();
        assert_eq!((user.name.as_str(), user.uid, user.gid), ("54321", 54321, 65534));
        assert_eq!((user.home.to_str(), user.shell.to_str()), (Some("/"), Some("/bin/sh")));
        let err = resolve(&process(Some("54321"), None)).unwrap_err();
        assert!(err.to_string().contains("process.run_as_group"), "{err}");
    }

    #[test]
    fn root_is_refused_as_user_or_group() {
        for (u, g) in
            [(Some("root"), None), (Some("0"), None), (Some("nobody"), Some("0")), (Some("nobody"), Some("root"))]
        {
            let err = resolve(&process(u, g)).unwrap_err();
            assert!(matches!(err, SandboxError::RootIdentity { .. }), "{u:?} {g:?}: {err}");
        }
    }

    #[test]
    fn unknown_names_say_which_field_and_how_to_fix() {
        let err = resolve(&process(Some("no-such-user-x"), None)).unwrap_err().to_string();
        assert!(
            err.contains("process.run_as_user") && err.contains("no-such-user-x") && err.contains("useradd"),
            "{err}"
        );
        let err = resolve(&process(Some("nobody"), Some("no-such-group-x"))).unwrap_err().to_string();
        assert!(err.contains("process.run_as_group") && err.contains("no-such-group-x"), "{err}");
    }
}
