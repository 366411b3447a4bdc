//! The cluster's view of the VMs: each host mirrors its VMs' records to
//! etcd (`vms/<host>/<id>`, rewritten when they change; the disk stays the
//! truth), claims their names (`names/<name>`) and ids (`ids/<id>`) in create-if-absent
//! transactions before a create's first side effect, and lists every
//! host's VMs (those of a dead host as `unreachable`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::etcd::{Cmp, Etcd, EtcdError, Op};
use super::{Cluster, lock, unix_now};
use crate::names::{VmId, VmName};
use crate::wire::api::VmView;

/// Seconds a name claim of this host may go without a VM of that name
/// before the reconcile pass releases it (a create under way holds one).
const STALE_CLAIM_SECS: u64 = 120;
/// Seconds between passes over the name claims (after a join: at once).
const NAMES_EVERY_SECS: u64 = 60;

/// The value of `names/<name>`.
#[derive(Debug, Serialize, Deserialize)]
struct NameOwner {
    host: String,
    at: u64,
}

/// What a claim is of: `names/<name>` or `ids/<id>`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Name,
    Id,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Id => "id",
        }
    }
}

/// What this host last wrote of its VMs (`vms/<host>/<id>`).
#[derive(Default)]
pub(super) struct Mirror {
    /// false after a join: read back what etcd holds before comparing.
    synced: bool,
    written: BTreeMap<String, Vec<u8>>,
    /// When the name claims were last gone over (0: never since the join).
    names_at: u64,
    /// Names already reported as another host's too (said once).
    clashes: Vec<String>,
    /// Other hosts' VMs as last listed (shown while etcd is out of reach).
    seen: Vec<VmView>,
}

impl Mirror {
    /// Forget what was written: after a join, everything is compared again.
    pub(super) fn reset(&mut self) {
        self.synced = false;
        self.names_at = 0;
    }
}

/// Why a name could not be claimed.
pub enum ClaimError {
    /// A VM of another host has it.
    Taken {
        host: String,
    },
    Unreachable(String),
}

impl Cluster {
    fn vm_key(&self, host: &str, id: &str) -> String {
        format!("{}vms/{host}/{id}", self.keys.0)
    }

    fn name_key(&self, name: &str) -> String {
        format!("{}names/{name}", self.keys.0)
    }

    fn id_key(&self, id: &str) -> String {
        format!("{}ids/{id}", self.keys.0)
    }

    /// Claims `name` for a new VM of this host (create-if-absent). A name
    /// this host already holds is its own again.
    pub fn claim_name(&self, name: &str) -> Result<(), ClaimError> {
        self.claim(&self.name_key(name))
    }

    /// Claims the id of a new VM of this host (create-if-absent, as names):
    /// ids are unique across the cluster too. A clash (another host holds
    /// it) is `Taken`: the caller picks another id.
    pub fn claim_id(&self, id: &str) -> Result<(), ClaimError> {
        self.claim(&self.id_key(id))
    }

    fn claim(&self, key: &str) -> Result<(), ClaimError> {
        let Some(etcd) = &self.etcd else {
            return Ok(());
        };
        if lock(&self.link).state != "connected" {
            let why = lock(&self.link).message.clone().unwrap_or_default();
            return Err(ClaimError::Unreachable(why));
        }
        let me = self.name();
        let value = serde_json::to_vec(&NameOwner {
            host: me.clone(),
            at: unix_now(),
        })
        .unwrap_or_default();
        let t = etcd
            .txn(
                &[Cmp::Absent(key.to_owned())],
                &[Op::Put {
                    key: key.to_owned(),
                    value,
                    lease: 0,
                }],
                &[Op::Get(key.to_owned())],
            )
            .map_err(|e| ClaimError::Unreachable(crate::error::chain(&e)))?;
        if t.succeeded {
            return Ok(());
        }
        let owner = t
            .got
            .first()
            .and_then(|kv| serde_json::from_slice::<NameOwner>(&kv.value).ok())
            .map_or_else(|| "unknown".to_owned(), |o| o.host);
        if owner == me {
            Ok(())
        } else {
            Err(ClaimError::Taken { host: owner })
        }
    }

    /// Gives a name back (a destroyed VM, a create undone). Best effort:
    /// out of reach, the reconcile pass releases it later.
    pub fn release_name(&self, name: &str) {
        self.release(&self.name_key(name));
    }

    /// Gives an id back (a destroyed VM, a create undone); as names.
    pub fn release_id(&self, id: &str) {
        self.release(&self.id_key(id));
    }

    fn release(&self, key: &str) {
        let Some(etcd) = &self.etcd else {
            return;
        };
        if lock(&self.link).state != "connected" {
            return;
        }
        if let Ok(Some(kv)) = etcd.get(key) {
            let mine =
                serde_json::from_slice::<NameOwner>(&kv.value).is_ok_and(|o| o.host == self.name());
            if mine {
                let _ = etcd.txn(
                    &[Cmp::ValueIs(key.to_owned(), kv.value)],
                    &[Op::Delete(key.to_owned())],
                    &[],
                );
            }
        }
        self.nudge();
    }

    /// Brings etcd's copy of this host's VMs in line with `vms` (the disk's):
    /// changed records rewritten, gone ones deleted; the name claims gone
    /// over every minute.
    pub(super) fn reconcile(&self, etcd: &Etcd, vms: &[VmView]) -> Result<(), EtcdError> {
        let me = self.name();
        let mut mirror = lock(&self.mirror);
        if !mirror.synced {
            let prefix = self.vm_key(&me, "");
            mirror.written = etcd
                .list(&prefix)?
                .into_iter()
                .filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?.to_owned(), kv.value)))
                .collect();
            mirror.synced = true;
        }
        let mut now = BTreeMap::new();
        for v in vms {
            let mut v = v.clone();
            v.host = Some(me.clone());
            now.insert(v.id.clone(), serde_json::to_vec(&v).unwrap_or_default());
        }
        for (id, bytes) in &now {
            if mirror.written.get(id) != Some(bytes) {
                etcd.put(&self.vm_key(&me, id), bytes, 0)?;
                mirror.written.insert(id.clone(), bytes.clone());
            }
        }
        let gone: Vec<String> = mirror
            .written
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            etcd.delete(&self.vm_key(&me, &id))?;
            mirror.written.remove(&id);
        }
        if unix_now().saturating_sub(mirror.names_at) >= NAMES_EVERY_SECS {
            self.reconcile_claims(etcd, Kind::Name, vms, &me, &mut mirror)?;
            self.reconcile_claims(etcd, Kind::Id, vms, &me, &mut mirror)?;
            mirror.names_at = unix_now();
        }
        Ok(())
    }

    /// Every VM's name (or id) claimed (VMs made before the host joined,
    /// or by a daemon that crashed before it claimed); this host's claims
    /// of names (ids) no VM has any more released; one two hosts' VMs
    /// share reported.
    fn reconcile_claims(
        &self,
        etcd: &Etcd,
        kind: Kind,
        vms: &[VmView],
        me: &str,
        mirror: &mut Mirror,
    ) -> Result<(), EtcdError> {
        let key = |v: &str| match kind {
            Kind::Name => self.name_key(v),
            Kind::Id => self.id_key(v),
        };
        let of = |v: &VmView| match kind {
            Kind::Name => v.name.clone(),
            Kind::Id => v.id.clone(),
        };
        let prefix = key("");
        let claims: BTreeMap<String, (Vec<u8>, Option<NameOwner>)> = etcd
            .list(&prefix)?
            .into_iter()
            .filter_map(|kv| {
                let name = kv.key.strip_prefix(&prefix)?.to_owned();
                let owner = serde_json::from_slice::<NameOwner>(&kv.value).ok();
                Some((name, (kv.value, owner)))
            })
            .collect();
        for v in vms.iter().filter(|v| v.state != "broken") {
            let held = of(v);
            match claims.get(&held).and_then(|(_, o)| o.as_ref()) {
                Some(o) if o.host == me => {}
                Some(o) => {
                    let said = format!("{kind:?} {held}");
                    if !mirror.clashes.contains(&said) {
                        eprintln!(
                            "fcm daemon: cluster: warning: VM {} has a {} ({held}) host {} holds too (made while the hosts could not see each other); recreate one",
                            v.name,
                            kind.word(),
                            o.host
                        );
                        mirror.clashes.push(said);
                    }
                }
                None => match self.claim(&key(&held)) {
                    Ok(()) | Err(ClaimError::Taken { .. }) => {}
                    Err(ClaimError::Unreachable(why)) => return Err(EtcdError::Unreachable(why)),
                },
            }
        }
        let now = unix_now();
        for (held, (raw, owner)) in claims {
            let stale = owner
                .as_ref()
                .is_some_and(|o| o.host == me && now.saturating_sub(o.at) > STALE_CLAIM_SECS);
            if stale && !vms.iter().any(|v| of(v) == held) {
                let k = key(&held);
                etcd.txn(&[Cmp::ValueIs(k.clone(), raw)], &[Op::Delete(k)], &[])?;
            }
        }
        Ok(())
    }

    /// Every host's VMs: this host's from its disk (`local`), the others'
    /// from etcd (a dead host's as `unreachable`); while etcd is out of
    /// reach, the others' as last seen, with a warning. A single host:
    /// `local` as it is.
    pub fn list_vms(&self, local: Vec<VmView>) -> Vec<VmView> {
        let Some(etcd) = &self.etcd else {
            return local;
        };
        let me = self.name();
        let mut out: Vec<VmView> = local
            .into_iter()
            .map(|mut v| {
                v.host = Some(me.clone());
                v
            })
            .collect();
        let connected = lock(&self.link).state == "connected";
        let others = if connected {
            self.others_vms(etcd, &me)
        } else {
            Err(EtcdError::Unreachable("not connected".into()))
        };
        match others {
            Ok(others) => {
                lock(&self.mirror).seen = others.clone();
                out.extend(others);
            }
            Err(_) => {
                let since = lock(&self.link).since;
                out.extend(lock(&self.mirror).seen.iter().cloned().map(|mut v| {
                    v.warnings.push(format!(
                        "the cluster is unreachable from this host (since unix time {since}): as last seen"
                    ));
                    v
                }));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.host.cmp(&b.host)));
        out
    }

    /// The other hosts' VMs in etcd. What another host wrote is untrusted:
    /// a record whose name or id is not valid, or whose key does not match
    /// it, is left out.
    fn others_vms(&self, etcd: &Etcd, me: &str) -> Result<Vec<VmView>, EtcdError> {
        let prefix = format!("{}vms/", self.keys.0);
        let records = etcd.list(&prefix)?;
        let alive = etcd.list(&self.keys.alives())?;
        let live = |host: &str| {
            let key = self.keys.alive(host);
            alive.iter().any(|a| a.key == key)
        };
        let mut out = Vec::new();
        for kv in records {
            let Some((host, id)) = kv.key.strip_prefix(&prefix).and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            if host == me || crate::config::host_name_problem(host).is_some() {
                continue;
            }
            let Ok(mut v) = serde_json::from_slice::<VmView>(&kv.value) else {
                continue;
            };
            if v.id != id || VmId::parse(&v.id).is_err() || VmName::parse(&v.name).is_err() {
                continue;
            }
            v.host = Some(host.to_owned());
            if !live(host) {
                v.state = "unreachable".into();
                v.warnings = vec![format!(
                    "its host {host} is not answering the cluster (dead): this is its last record"
                )];
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Claims against a real etcd (one member on loopback, in a temp dir): a
/// clash of ids cannot be caused through the API (they are random), so
/// two hosts' `Cluster`s claim the same id here.
#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::DaemonConfig;

    struct Etcd(Child);
    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    fn host(name: &str, url: &str, dir: &std::path::Path) -> Cluster {
        let mut cfg = DaemonConfig {
            state_dir: dir.join(name),
            ..Default::default()
        };
        std::fs::create_dir_all(&cfg.state_dir).expect("state dir");
        cfg.cluster.endpoints = vec![url.to_owned()];
        cfg.cluster.host_name = Some(name.to_owned());
        cfg.cluster.advertise = Some("127.0.0.1:1".parse().expect("addr"));
        let c = Cluster::new(&cfg, "", false, "token").expect("cluster");
        lock(&c.link).state = "connected";
        c
    }

    #[test]
    fn an_id_another_host_holds_is_refused_and_given_back_only_by_it() {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("skipped: no etcd binary (scripts/test.sh installs etcd-server)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let _etcd = Etcd(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path().join("etcd"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args([
                    "--initial-cluster",
                    &format!("default=http://127.0.0.1:{peer}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd"),
        );
        let (a, b) = (host("ha", &url, dir.path()), host("hb", &url, dir.path()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while a.claim_id("abcd1234").is_err() {
            assert!(Instant::now() < deadline, "etcd did not answer in 20 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Another host's claim of the same id: refused, naming the holder.
        match b.claim_id("abcd1234") {
            Err(ClaimError::Taken { host }) => assert_eq!(host, "ha"),
            _ => panic!("hb's claim of ha's id must be refused"),
        }
        // Its own again; a name with the same text is another key.
        assert!(a.claim_id("abcd1234").is_ok());
        assert!(b.claim_name("abcd1234").is_ok());
        // Only its holder gives it back.
        b.release_id("abcd1234");
        assert!(matches!(
            b.claim_id("abcd1234"),
            Err(ClaimError::Taken { .. })
        ));
        a.release_id("abcd1234");
        assert!(b.claim_id("abcd1234").is_ok());
        let etcd = a.etcd.as_ref().expect("etcd");
        let held = etcd.get("/fcm/ids/abcd1234").expect("get").expect("claim");
        assert!(String::from_utf8_lossy(&held.value).contains("\"host\":\"hb\""));
    }
}
