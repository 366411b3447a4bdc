//! Users, read from the guest's own `/etc/passwd` and `/etc/group`: the
//! agent is a static binary, so it never asks NSS (`getpwnam` would need
//! the guest's libc and its modules).

use crate::error::OpError;

/// Whom a program runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary groups: the primary one, then those that list the
    /// user as a member.
    pub groups: Vec<u32>,
}

/// One line of `/etc/passwd`.
struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
    shell: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
            shell: f[6],
        })
    })
}

/// The groups whose member list names `user`.
fn member_of(group_text: &str, user: &str) -> impl Iterator<Item = u32> {
    group_text.lines().filter_map(move |line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0].starts_with(['#', '+', '-']) {
            return None;
        }
        let gid = f[2].parse().ok()?;
        f[3].split(',').any(|m| m.trim() == user).then_some(gid)
    })
}

/// Looks up `spec` (a name or a number; `None` is root) in the contents of
/// `/etc/passwd` and `/etc/group`. A number that no line names is used as
/// is (its group the same number, its home `/`); a name no line names is
/// an error, as is an empty one.
pub fn lookup(spec: Option<&str>, passwd: &str, group: &str) -> Result<User, OpError> {
    let spec = spec.unwrap_or("root");
    if spec.is_empty() {
        return Err(OpError::invalid("an empty user name"));
    }
    let number = if spec.bytes().all(|b| b.is_ascii_digit()) {
        Some(
            spec.parse::<u32>()
                .map_err(|_| OpError::invalid(format!("user id {spec} is out of range")))?,
        )
    } else {
        None
    };
    let found = passwd_entries(passwd).find(|p| match number {
        Some(uid) => p.uid == uid,
        None => p.name == spec,
    });
    let mut user = match (found, number) {
        (Some(p), _) => User {
            name: p.name.into(),
            uid: p.uid,
            gid: p.gid,
            home: non_empty(p.home, "/"),
            shell: non_empty(p.shell, "/bin/sh"),
            groups: Vec::new(),
        },
        (None, Some(uid)) => User {
            name: if uid == 0 { "root".into() } else { spec.into() },
            uid,
            gid: uid,
            home: if uid == 0 { "/root".into() } else { "/".into() },
            shell: "/bin/sh".into(),
            groups: Vec::new(),
        },
        (None, None) if spec == "root" => User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
            groups: Vec::new(),
        },
        (None, None) => {
            return Err(OpError::invalid(format!(
                "no user {spec} in the guest's /etc/passwd"
            )));
        }
    };
    user.groups.push(user.gid);
    for gid in member_of(group, &user.name) {
        if !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(user)
}

/// Looks up an OCI `User` spec: `user` (as [`lookup`]) or `user:group`,
/// the group a name in `/etc/group` or a number (used as is). With a group
/// given, it is the primary one and heads the supplementary groups.
pub fn lookup_spec(spec: Option<&str>, passwd: &str, group: &str) -> Result<User, OpError> {
    let Some((user_part, group_part)) = spec.and_then(|s| s.split_once(':')) else {
        return lookup(spec, passwd, group);
    };
    let mut user = lookup(Some(user_part), passwd, group)?;
    let gid = group_id(group_part, group)?;
    user.gid = gid;
    user.groups.retain(|&g| g != gid);
    user.groups.insert(0, gid);
    Ok(user)
}

/// A group by name (in `/etc/group`) or by number.
fn group_id(spec: &str, group_text: &str) -> Result<u32, OpError> {
    if spec.is_empty() {
        return Err(OpError::invalid("an empty group name"));
    }
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        return spec
            .parse()
            .map_err(|_| OpError::invalid(format!("group id {spec} is out of range")));
    }
    group_text
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3 && f[0] == spec).then(|| f[2].parse().ok())?
        })
        .ok_or_else(|| OpError::invalid(format!("no group {spec} in the guest's /etc/group")))
}

fn non_empty(s: &str, default: &str) -> String {
    if s.is_empty() { default } else { s }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
+nis-line
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken:x:notanumber:1::/:/bin/sh
alice:x:1000:1000:Alice,,,:/home/alice:
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:alice,bob
audio:x:29:bob, alice
alice:x:1000:
";

    #[test]
    fn names_and_numbers_are_found() {
        let a = lookup(Some("alice"), PASSWD, GROUP).expect("alice");
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.home, "/home/alice");
        assert_eq!(a.shell, "/bin/sh", "an empty shell is sh");
        assert_eq!(a.groups, vec![1000, 10, 29]);
        let n = lookup(Some("65534"), PASSWD, GROUP).expect("by number");
        assert_eq!(n.name, "nobody");
        let r = lookup(None, PASSWD, GROUP).expect("root");
        assert_eq!(
            (r.uid, r.home.as_str(), r.groups.as_slice()),
            (0, "/root", &[0][..])
        );
    }

    #[test]
    fn unknown_numbers_are_used_as_they_are_and_names_refused() {
        let u = lookup(Some("4242"), PASSWD, GROUP).expect("a bare number");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4242, "/"));
        assert!(lookup(Some("mallory"), PASSWD, GROUP).is_err());
        assert!(lookup(Some("broken"), PASSWD, GROUP).is_err());
        assert!(lookup(Some(""), PASSWD, GROUP).is_err());
        assert!(lookup(Some("99999999999"), PASSWD, GROUP).is_err());
        // No passwd at all: root still works.
        assert_eq!(lookup(None, "", "").expect("root").uid, 0);
    }

    #[test]
    fn oci_user_specs_take_a_group() {
        let a = lookup_spec(Some("alice:audio"), PASSWD, GROUP).expect("name:group");
        assert_eq!((a.uid, a.gid), (1000, 29));
        assert_eq!(a.groups, vec![29, 1000, 10]);
        let n = lookup_spec(Some("1000:10"), PASSWD, GROUP).expect("uid:gid");
        assert_eq!((n.name.as_str(), n.uid, n.gid), ("alice", 1000, 10));
        let bare = lookup_spec(Some("4242:4343"), "", "").expect("bare numbers");
        assert_eq!(
            (bare.uid, bare.gid, bare.groups.as_slice()),
            (4242, 4343, &[4343, 4242][..])
        );
        assert_eq!(
            lookup_spec(Some("alice"), PASSWD, GROUP).expect("name").gid,
            1000
        );
        assert_eq!(lookup_spec(None, PASSWD, GROUP).expect("root").uid, 0);
        assert!(lookup_spec(Some("alice:nogroup"), PASSWD, GROUP).is_err());
        assert!(lookup_spec(Some("alice:"), PASSWD, GROUP).is_err());
        assert!(lookup_spec(Some("mallory:10"), PASSWD, GROUP).is_err());
    }
}
