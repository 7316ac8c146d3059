//! Which service or container a process belongs to, from /proc/PID/cgroup.

/// A process's place: its cgroup v2 path, and the systemd unit or container
/// it stands for, when recognisable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub path: String,
    pub unit: Option<String>,
    pub container: Option<String>,
}

/// Parses /proc/PID/cgroup (the unified hierarchy line `0::/…`, or the
/// systemd controller's line on hybrid hosts).
pub fn parse(text: &str) -> Placement {
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            text.lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        })
        .unwrap_or("")
        .trim()
        .to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let container = segments.iter().rev().find_map(|s| container_id(s));
    // The innermost service or scope, skipping container scopes and slices.
    let unit = segments
        .iter()
        .rev()
        .find(|s| (s.ends_with(".service") || s.ends_with(".scope")) && container_id(s).is_none())
        .map(|s| s.to_string());
    Placement { path, unit, container }
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
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_services_are_units() {
        let p = parse("0::/system.slice/nginx.service\n");
        assert_eq!(p.unit.as_deref(), Some("nginx.service"));
        assert_eq!(p.container, None);
        let p = parse("0::/user.slice/user-1000.slice/session-3.scope\n");
        assert_eq!(p.unit.as_deref(), Some("session-3.scope"));
    }

    #[test]
    fn containers_are_recognised() {
        let id = "3f4c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d";
        let p = parse(&format!("0::/system.slice/docker-{id}.scope\n"));
        assert_eq!(p.container.as_deref(), Some("3f4c0a9b8e7d"));
        assert_eq!(p.unit, None);
        let p = parse(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope\n"
        ));
        assert_eq!(p.container.as_deref(), Some("3f4c0a9b8e7d"));
        let p = parse(&format!("0::/docker/{id}\n"));
        assert_eq!(p.container.as_deref(), Some("3f4c0a9b8e7d"));
    }

    #[test]
    fn hybrid_hosts_use_the_systemd_line() {
        let p = parse("12:memory:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n");
        assert_eq!(p.unit.as_deref(), Some("cron.service"));
    }

    #[test]
    fn the_root_cgroup_has_nothing() {
        assert_eq!(
            parse("0::/\n"),
            Placement {
                path: "/".into(),
                unit: None,
                container: None
            }
        );
    }
}
