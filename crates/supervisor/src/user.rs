//! Running a worker as another user (`user =`, `group =` in fleet.toml).

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
use std::ffi::CString;

/// Who a worker process runs as: resolved before fork, applied after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Looks up `user` (and `group`, default the user's primary group).
pub fn resolve_identity(user: &str, group: Option<&str>) -> Result<Identity, String> {
    if !Uid::effective().is_root() {
        return Err(format!(
            "user = {user:?} needs the daemon to run as root (it runs as uid {})",
            Uid::effective()
        ));
    }
    let u = User::from_name(user)
        .map_err(|e| format!("looking up user {user:?}: {e}"))?
        .ok_or_else(|| format!("no such user {user:?}"))?;
    let gid = match group {
        None => u.gid,
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("looking up group {g:?}: {e}"))?
                .ok_or_else(|| format!("no such group {g:?}"))?
                .gid
        }
    };
    let cname = CString::new(user).map_err(|_| format!("invalid user name {user:?}"))?;
    let groups =
        getgrouplist(&cname, gid).map_err(|e| format!("listing the groups of {user:?}: {e}"))?;
    Ok(Identity {
        user: user.to_string(),
        uid: u.uid.as_raw(),
        gid: gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
        home: u.dir.to_string_lossy().into_owned(),
    })
}
