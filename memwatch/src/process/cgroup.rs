//! Which service, container or pod a process belongs to, from
//! /proc/PID/cgroup, and its pid as its own namespace sees it (NSpid), so
//! that a report can be matched with `docker top`, `kubectl` and the
//! container's own logs.

use serde::Serialize;

use super::procfs;

/// A process's place: its cgroup path, and the systemd unit, container and
/// Kubernetes pod it stands for, when recognisable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    #[serde(skip)]
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The whole container id (64 hex digits); [`Placement::container_short`]
    /// is what `docker ps` shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The pod's UID, as `kubectl get pod -o jsonpath='{.metadata.uid}'`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's QoS class: guaranteed, burstable or besteffort.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// Where its memory is accounted and limited (see [`super::memcg`]).
    #[serde(skip)]
    pub memory: Option<super::memcg::MemoryCgroup>,
}

impl Placement {
    /// The container id as `docker ps` shows it.
    pub fn container_short(&self) -> Option<&str> {
        self.container.as_deref().map(|c| c.get(..12).unwrap_or(c))
    }

    /// The systemd unit or, failing that, the short container id: a bounded
    /// name for a group of processes.
    pub fn group(&self) -> Option<&str> {
        self.unit.as_deref().or(self.container_short())
    }
}

/// Parses /proc/PID/cgroup. The unified hierarchy's line (`0::/…`) names
/// the place on cgroup v2; on v1 and hybrid hosts it may be `/` while the
/// systemd controller's line (`name=systemd`) or the controllers' own lines
/// carry the same names (docker's cgroupfs driver: `/docker/<id>`), so the
/// first line that is not the root is taken, in that order of preference.
pub fn parse(text: &str) -> Placement {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            Some((controllers, path.trim()))
        })
        .collect();
    let rank = |c: &str| match c {
        "" => 0,
        "name=systemd" => 1,
        c if c.split(',').any(|c| c == "memory") => 2,
        _ => 3,
    };
    let path = lines
        .iter()
        .filter(|(_, p)| *p != "/")
        .min_by_key(|(c, _)| rank(c))
        .or_else(|| lines.iter().min_by_key(|(c, _)| rank(c)))
        .map_or("", |(_, p)| p)
        .to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let container = segments.iter().rev().find_map(|s| container_id(s));
    // The innermost service or scope, skipping container scopes and slices.
    let unit = segments
        .iter()
        .rev()
        .find(|s| (s.ends_with(".service") || s.ends_with(".scope")) && container_id(s).is_none())
        .map(|s| s.to_string());
    let (pod, qos) = pod(&segments);
    // v1's memory controller where it is mounted (hybrid hosts), else the
    // unified hierarchy's.
    let memory = lines
        .iter()
        .find(|(c, _)| c.split(',').any(|c| c == "memory"))
        .map(|(_, p)| super::memcg::MemoryCgroup {
            path: p.to_string(),
            v1: true,
        })
        .or_else(|| {
            lines
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| super::memcg::MemoryCgroup {
                    path: p.to_string(),
                    v1: false,
                })
        });
    Placement {
        path,
        unit,
        container,
        pod,
        qos,
        memory,
    }
}

/// A container id in a cgroup path segment: docker-<id>.scope,
/// cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope or a bare
/// 64-hex-digit directory (cgroupfs drivers).
fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// The pod UID and QoS class of a kubelet's cgroup path: the systemd driver
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
/// with _>.slice`) or the cgroupfs one (`kubepods/besteffort/pod<uid>`); a
/// guaranteed pod sits directly under kubepods.
fn pod(segments: &[&str]) -> (Option<String>, Option<String>) {
    let Some(root) = segments.iter().position(|s| *s == "kubepods" || *s == "kubepods.slice") else {
        return (None, None);
    };
    let mut qos = "guaranteed";
    for s in &segments[root + 1..] {
        let name = s.strip_suffix(".slice").unwrap_or(s);
        let name = name.strip_prefix("kubepods-").unwrap_or(name);
        for class in ["burstable", "besteffort"] {
            if name == class {
                qos = class;
            }
        }
        let uid = name
            .strip_prefix("burstable-")
            .or_else(|| name.strip_prefix("besteffort-"))
            .unwrap_or(name)
            .strip_prefix("pod");
        if let Some(uid) = uid.filter(|u| u.len() == 36) {
            return (Some(uid.replace('_', "-")), Some(qos.to_string()));
        }
    }
    (None, None)
}

/// The process's pid in its own (innermost) pid namespace, from the NSpid
/// line of /proc/PID/status; None when it shares the host's.
pub fn parse_nspid(status: &str) -> Option<u32> {
    let ids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    (ids.len() > 1).then(|| *ids.last().expect("more than one"))
}

/// Where `pid` is: its cgroup placement and its pid inside its namespace.
pub fn read(pid: u32) -> (Placement, Option<u32>) {
    let read = |file| std::fs::read_to_string(procfs::proc_path(pid, file)).unwrap_or_default();
    (parse(&read("cgroup")), parse_nspid(&read("status")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d";

    #[test]
    fn services_are_recognised() {
        let p = parse("0::/system.slice/nginx.service\n");
        assert_eq!(p.unit.as_deref(), Some("nginx.service"));
        assert_eq!(p.container, None);
        let p = parse("0::/user.slice/user-1000.slice/session-3.scope\n");
        assert_eq!(p.unit.as_deref(), Some("session-3.scope"));
    }

    #[test]
    fn containers_are_recognised_with_their_whole_id() {
        let p = parse(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(p.container.as_deref(), Some(ID));
        assert_eq!(p.container_short(), Some("3f4c0a9b8e7d"));
        assert_eq!(p.group(), Some("3f4c0a9b8e7d"));
        assert_eq!(p.unit, None);
        let p = parse(&format!("0::/docker/{ID}\n"));
        assert_eq!(p.container.as_deref(), Some(ID));
        for runtime in ["cri-containerd", "crio", "libpod"] {
            let p = parse(&format!("0::/machine.slice/{runtime}-{ID}.scope\n"));
            assert_eq!(p.container.as_deref(), Some(ID), "{runtime}");
        }
    }

    #[test]
    fn pods_are_named_by_uid_and_qos_class() {
        let uid = "0d3a1c2b-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            uid.replace('-', "_")
        );
        let p = parse(&systemd);
        assert_eq!(p.pod.as_deref(), Some(uid));
        assert_eq!(p.qos.as_deref(), Some("burstable"));
        assert_eq!(p.container.as_deref(), Some(ID));
        let p = parse(&format!("0::/kubepods/besteffort/pod{uid}/{ID}\n"));
        assert_eq!((p.pod.as_deref(), p.qos.as_deref()), (Some(uid), Some("besteffort")));
        let p = parse(&format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n",
            uid.replace('-', "_")
        ));
        assert_eq!((p.pod.as_deref(), p.qos.as_deref()), (Some(uid), Some("guaranteed")));
        assert_eq!(parse("0::/system.slice/kubelet.service\n").pod, None);
    }

    #[test]
    fn hybrid_and_v1_hosts_use_the_first_line_that_is_not_the_root() {
        let p = parse("12:memory:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/\n");
        assert_eq!(p.unit.as_deref(), Some("cron.service"));
        // Docker's cgroupfs driver on a v1 host: only the controllers' lines.
        let p = parse(&format!(
            "9:name=systemd:/\n4:memory:/docker/{ID}\n3:cpuset:/docker/{ID}\n0::/\n"
        ));
        assert_eq!(p.container.as_deref(), Some(ID));
        assert_eq!(p.path, format!("/docker/{ID}"));
        // As this machine's own processes are placed.
        let p = parse("9:name=systemd:/\n4:memory:/process_api/783f896f\n0::/\n");
        assert_eq!((p.unit, p.container), (None, None));
    }

    #[test]
    fn the_root_cgroup_has_nothing() {
        assert_eq!(
            parse("0::/\n"),
            Placement {
                path: "/".into(),
                // Its memory is the root cgroup's.
                memory: Some(super::super::memcg::MemoryCgroup {
                    path: "/".into(),
                    v1: false
                }),
                ..Placement::default()
            }
        );
        assert_eq!(parse(""), Placement::default());
    }

    #[test]
    fn the_pid_inside_a_namespace_is_the_last_nspid() {
        assert_eq!(parse_nspid("Name:\tleaker\nNSpid:\t41234\t7\nPPid:\t1\n"), Some(7));
        assert_eq!(parse_nspid("NSpid:\t41234\t900\t1\n"), Some(1));
        assert_eq!(parse_nspid("NSpid:\t41234\n"), None);
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }
}
