//! Who a process is and where it runs: what every per-process record and
//! report begins with (`/leaks`, `/processes`, `/oom`), kept in one place
//! so that a new field reaches all of them.

use serde::Serialize;

use super::cgroup::Placement;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub pid: u32,
    /// The pid inside its own pid namespace (a container's), as `docker
    /// top` and the container's logs show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nspid: Option<u32>,
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
    /// Its systemd unit, container (whole id), pod UID and QoS class.
    #[serde(flatten)]
    pub place: Placement,
}
