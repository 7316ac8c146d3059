//! `/processes`: every process on the host as sampling last saw it, firing
//! alerts and suspects first, then by heap; the page's host view.
//! `?filter=TEXT` keeps those whose pid, name, command line, unit or
//! container contains TEXT; `?limit=N` (100); `?pid=N` one process.

use serde::Serialize;

use crate::{
    collect::snapshot::{HostProcess, Snapshot},
    process::Identity,
    watch::{alert::Alert, estimator::Verdict},
};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostQuery {
    pub pid: Option<u32>,
    pub filter: Option<String>,
    pub limit: usize,
}

/// Parses the query string (percent-encoded, as a form sends it).
pub fn parse(raw: Option<&str>) -> Result<HostQuery, String> {
    let mut q = HostQuery {
        limit: 100,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "pid" => {
                q.pid = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&p: &u32| p > 0)
                        .ok_or_else(|| format!("invalid pid {value:?}: expected a process id"))?,
                )
            }
            "filter" => q.filter = Some(value.trim().to_lowercase()).filter(|f| !f.is_empty()),
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|&l: &usize| (1..=100_000).contains(&l))
                    .ok_or_else(|| format!("invalid limit {value:?}: expected 1 to 100000 processes"))?
            }
            _ => return Err(format!("unknown parameter {key:?}: expected pid, filter or limit")),
        }
    }
    Ok(q)
}

#[derive(Debug, Serialize)]
pub struct HostReport {
    /// Whether host-wide sampling runs (without it only tracked processes
    /// are listed, with no memory figures).
    pub watching: bool,
    pub snapshot_unix: f64,
    pub watched_processes: usize,
    /// Processes the filter kept, before `limit`.
    pub matched: usize,
    pub processes: Vec<HostProcessReport>,
}

#[derive(Debug, Serialize)]
pub struct HostProcessReport {
    #[serde(flatten)]
    pub id: Identity,
    /// Anonymous memory, resident and swapped: what a leak grows.
    pub heap_bytes: u64,
    pub resident_bytes: u64,
    pub verdict: Verdict,
    pub rate_bytes_per_second: f64,
    pub alert: Alert,
    /// Listed under `suspects` in `/leaks`.
    pub suspect: bool,
    /// Tracked exactly: `/leaks?pid=` has its stacks.
    pub tracked: bool,
    /// Its heap at the samples kept (the detection windows' span), oldest
    /// first: [Unix seconds, bytes]; thinned to 24 points in a listing.
    pub heap_history: Vec<(f64, u64)>,
}

impl HostProcessReport {
    /// `heap_history` thinned to `points` (all of it with None).
    fn of(p: &HostProcess, tracked: bool, points: Option<usize>) -> Self {
        HostProcessReport {
            id: p.id.clone(),
            heap_bytes: p.memory.heap(),
            resident_bytes: p.memory.rss,
            verdict: p.verdict,
            rate_bytes_per_second: p.rate,
            alert: p.alert,
            suspect: p.suspect,
            tracked,
            heap_history: match points {
                Some(n) => thinned(&p.heap_history, n),
                None => p.heap_history.clone(),
            },
        }
    }
}

fn matches(id: &Identity, filter: &str) -> bool {
    let place = [&id.place.unit, &id.place.container, &id.place.pod];
    id.pid.to_string() == filter
        || [&id.comm, &id.exe, &id.cmdline]
            .into_iter()
            .chain(place.into_iter().flatten())
            .any(|s| s.to_lowercase().contains(filter))
}

fn rank(p: &HostProcess, tracked: bool) -> u8 {
    match p.alert {
        Alert::Firing { .. } => 0,
        Alert::Pending { .. } => 1,
        _ if p.suspect => 2,
        _ if tracked => 3,
        _ => 4,
    }
}

/// Points per process in a listing (a sparkline's worth: 1,000 processes
/// weigh about a megabyte); `?pid=` gets every sample kept.
const SPARKLINE_POINTS: usize = 24;

/// At most `n` of `points`, evenly spread, the first and last kept.
fn thinned(points: &[(f64, u64)], n: usize) -> Vec<(f64, u64)> {
    if points.len() <= n || n < 2 {
        return points.to_vec();
    }
    (0..n).map(|i| points[i * (points.len() - 1) / (n - 1)]).collect()
}

#[derive(Debug, PartialEq, Eq)]
pub struct UnknownProcess(pub u32);

impl std::fmt::Display for UnknownProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} is neither sampled nor tracked (exited, or never seen)",
            self.0
        )
    }
}

/// Ranks and filters the processes, then builds reports for the `limit`
/// kept only (a listing of 100 from 1,000 copies 100 curves, not 1,000).
pub fn build(snapshot: &Snapshot, q: &HostQuery) -> Result<HostReport, UnknownProcess> {
    let tracked = |pid: u32| snapshot.processes.iter().any(|p| p.id.pid == pid);
    let sampled = &snapshot.watch.processes;
    // Tracked processes sampling has not seen (it is off, or they are new).
    let unsampled: Vec<HostProcess> = snapshot
        .processes
        .iter()
        .filter(|p| !sampled.iter().any(|s| s.id.pid == p.id.pid))
        .map(|p| HostProcess {
            id: p.id.clone(),
            memory: Default::default(),
            verdict: Verdict::Flat,
            rate: 0.0,
            alert: Alert::Inactive,
            suspect: false,
            heap_history: Vec::new(),
        })
        .collect();
    let mut list: Vec<(&HostProcess, bool)> = sampled
        .iter()
        .map(|p| (p, tracked(p.id.pid)))
        .chain(unsampled.iter().map(|p| (p, true)))
        .filter(|(p, _)| q.pid.is_none_or(|pid| p.id.pid == pid))
        .collect();
    if let Some(pid) = q.pid
        && list.is_empty()
    {
        return Err(UnknownProcess(pid));
    }
    if let Some(f) = &q.filter {
        list.retain(|(p, _)| matches(&p.id, f));
    }
    list.sort_by(|(a, at), (b, bt)| {
        rank(a, *at)
            .cmp(&rank(b, *bt))
            .then(b.memory.heap().cmp(&a.memory.heap()))
            .then(a.id.pid.cmp(&b.id.pid))
    });
    let matched = list.len();
    list.truncate(q.limit);
    let points = q.pid.is_none().then_some(SPARKLINE_POINTS);
    Ok(HostReport {
        watching: snapshot.watch.enabled,
        snapshot_unix: snapshot.taken_at_unix,
        watched_processes: snapshot.watch.watched_processes,
        matched,
        processes: list
            .into_iter()
            .map(|(p, t)| HostProcessReport::of(p, t, points))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::procmem::Memory;

    fn host(pid: u32, comm: &str, heap: u64, alert: Alert) -> HostProcess {
        HostProcess {
            id: Identity {
                pid,
                nspid: None,
                comm: comm.into(),
                exe: format!("/usr/bin/{comm}"),
                cmdline: format!("{comm} --serve"),
                place: crate::process::cgroup::parse("0::/system.slice/web.service\n"),
            },
            memory: Memory {
                anon: heap,
                rss: heap * 2,
                ..Default::default()
            },
            verdict: Verdict::Flat,
            rate: 0.0,
            alert,
            suspect: !matches!(alert, Alert::Inactive),
            heap_history: vec![(100.0, heap / 2), (102.0, heap)],
        }
    }

    fn snapshot() -> Snapshot {
        let mut s = crate::leaks::tests::fake_snapshot();
        s.watch.enabled = true;
        s.watch.watched_processes = 3;
        s.watch.processes = vec![
            host(1, "big", 900 << 20, Alert::Inactive),
            host(42, "leaky", 10 << 20, Alert::Inactive),
            host(
                3,
                "grows",
                1 << 20,
                Alert::Pending {
                    since: 5.0,
                    last_seen: 6.0,
                },
            ),
        ];
        s
    }

    #[test]
    fn alerts_come_first_then_the_largest_heaps_and_tracked_ones_are_marked() {
        let r = build(&snapshot(), &parse(None).unwrap()).unwrap();
        let order: Vec<u32> = r.processes.iter().map(|p| p.id.pid).collect();
        // 42 is tracked (and sampled); 7 is tracked but not sampled.
        assert_eq!(order, [3, 42, 7, 1]);
        assert!(r.processes[1].tracked && !r.processes[3].tracked);
        assert_eq!(r.processes[0].heap_history, [(100.0, 512 << 10), (102.0, 1 << 20)]);
        assert_eq!(r.processes[3].heap_bytes, 900 << 20);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["processes"][0]["alert"]["state"], "pending");
        assert_eq!(json["processes"][0]["unit"], "web.service");
    }

    #[test]
    fn listings_thin_the_curves_and_one_process_gets_them_whole() {
        let mut s = snapshot();
        s.watch.processes[0].heap_history = (0..63).map(|i| (i as f64, i)).collect();
        let r = build(&s, &parse(None).unwrap()).unwrap();
        let curve = &r.processes.iter().find(|p| p.id.pid == 1).unwrap().heap_history;
        assert_eq!(curve.len(), SPARKLINE_POINTS);
        assert_eq!((curve[0], curve[23]), ((0.0, 0), (62.0, 62)));
        assert!(curve.windows(2).all(|w| w[0].0 < w[1].0));
        let r = build(&s, &parse(Some("pid=1")).unwrap()).unwrap();
        assert_eq!(r.processes[0].heap_history.len(), 63);
    }

    #[test]
    fn filter_limit_and_pid() {
        let s = snapshot();
        let r = build(&s, &parse(Some("filter=WEB.serv&limit=2")).unwrap()).unwrap();
        assert_eq!((r.matched, r.processes.len()), (3, 2));
        // Percent-decoded, trimmed and case-blind, as a form sends it.
        let r = build(&s, &parse(Some("filter=%20%42ig+")).unwrap()).unwrap();
        assert_eq!(r.processes.iter().map(|p| p.id.pid).collect::<Vec<_>>(), [1]);
        let r = build(&s, &parse(Some("filter=3")).unwrap()).unwrap();
        assert_eq!(r.processes[0].id.pid, 3);
        assert_eq!(build(&s, &parse(Some("pid=1")).unwrap()).unwrap().processes.len(), 1);
        assert_eq!(
            build(&s, &parse(Some("pid=99")).unwrap()).unwrap_err(),
            UnknownProcess(99)
        );
        for bad in ["pid=0", "limit=0", "nope=1", "pid=x"] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
