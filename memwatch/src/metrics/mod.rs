//! Prometheus metrics. Each component registers its own; all are refreshed
//! from a [`Snapshot`] after every scan, so a scrape only encodes.
//!
//! Labels are bounded: `allocator` (a handful), `reason` (fixed), `exe` for
//! the top-N executables only. No pid, address or stack labels.

mod allocator;
mod control;
mod daemon;
mod kernel;
mod oom;
mod probes;
mod process;
pub mod python;
mod series;
mod unwind;
mod watch;

use prometheus::{Encoder, Registry, TextEncoder};

use crate::collect::snapshot::Snapshot;

pub struct Metrics {
    registry: Registry,
    watch: watch::WatchMetrics,
    allocator: allocator::AllocatorMetrics,
    kernel: kernel::KernelMetrics,
    processes: process::ProcessMetrics,
    daemon: daemon::DaemonMetrics,
    probes: probes::ProbeMetrics,
    unwind: unwind::UnwindMetrics,
    python: python::PythonMetrics,
    control: control::ControlMetrics,
    oom: oom::OomMetrics,
}

impl Metrics {
    pub fn new(top_processes: usize) -> Self {
        let registry = Registry::new();
        Metrics {
            allocator: allocator::AllocatorMetrics::register(&registry),
            kernel: kernel::KernelMetrics::register(&registry),
            processes: process::ProcessMetrics::register(&registry, top_processes),
            daemon: daemon::DaemonMetrics::register(&registry),
            probes: probes::ProbeMetrics::register(&registry),
            watch: watch::WatchMetrics::register(&registry, top_processes),
            unwind: unwind::UnwindMetrics::register(&registry),
            python: python::PythonMetrics::register(&registry, top_processes),
            control: control::ControlMetrics::register(&registry),
            oom: oom::OomMetrics::register(&registry),
            registry,
        }
    }

    /// The latest object censuses of tracked Python processes, by executable.
    pub fn update_python(&self, censuses: &[(String, crate::objects::Taken)]) {
        self.python.update(censuses);
    }

    /// A control request answered (`ok`: carried out).
    pub fn control_request(&self, name: &str, ok: bool) {
        self.control.request(name, ok);
    }

    /// A SIGHUP's config re-read (`applied`, or refused with the old kept).
    pub fn config_reload(&self, applied: bool) {
        self.control.reload(applied);
    }

    pub fn update(&self, s: &Snapshot) {
        self.control.update(s);
        self.oom.update(s);
        self.allocator.update(s);
        self.kernel.update(s);
        self.processes.update(s);
        self.daemon.update(s);
        self.probes.update(s);
        self.watch.update(s);
        self.unwind.update(s);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use memwatch_common::{alloc::ProcCounters, cookie::Family, drop::Drop};

    use super::*;
    use crate::collect::snapshot::{GroupTotals, HostGroup};

    fn group(name: &str, live: u64, allocations: u64) -> GroupTotals {
        GroupTotals {
            exe_name: name.into(),
            counters: ProcCounters {
                allocations,
                ..Default::default()
            },
            live_bytes: live,
            live_allocations: 1,
            processes: 1,
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn totals_and_losses_are_exported() {
        let m = Metrics::new(2);
        let s = Snapshot {
            families: vec![(
                Family::Libc,
                ProcCounters {
                    allocations: 5,
                    frees: 3,
                    allocated_bytes: 500,
                    freed_bytes: 300,
                    ..Default::default()
                },
            )],
            drops: vec![(Drop::LiveMapFull, 4), (Drop::StackCaptureFailed, 0)],
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(value(&t, "memwatch_allocations_total{allocator=\"libc\"}"), Some(5.0));
        assert_eq!(value(&t, "memwatch_freed_bytes_total{allocator=\"libc\"}"), Some(300.0));
        assert_eq!(
            value(&t, "memwatch_kernel_events_lost_total{reason=\"live_map_full\"}"),
            Some(4.0)
        );
        assert_eq!(
            value(&t, "memwatch_kernel_events_lost_total{reason=\"missed_free\"}"),
            Some(0.0)
        );
        // Counters never go backwards, whatever a snapshot says.
        m.update(&Snapshot {
            families: vec![(Family::Libc, ProcCounters::default())],
            ..Default::default()
        });
        assert_eq!(
            value(&m.encode(), "memwatch_allocations_total{allocator=\"libc\"}"),
            Some(5.0)
        );
    }

    #[test]
    fn five_hundred_containers_make_a_bounded_number_of_series() {
        use crate::collect::snapshot::WatchSnapshot;
        // 500 containers, each a process of its own, placed as docker's
        // systemd driver places them; the group's unit label is the short id.
        let groups: Vec<HostGroup> = (0..500u64)
            .map(|i| {
                let id = format!("{i:012x}{}", "e".repeat(52));
                let place = crate::process::cgroup::parse(&format!("0::/system.slice/docker-{id}.scope\n"));
                HostGroup {
                    exe_name: "worker".into(),
                    unit: place.group().unwrap().to_string(),
                    processes: 1,
                    resident_bytes: 1000 + i,
                    anon_bytes: 500 + i,
                    growth_bytes_per_second: 0.0,
                    pending: usize::from(i % 100 == 0),
                    firing: 0,
                }
            })
            .collect();
        assert!(groups.iter().all(|g| g.unit.len() == 12));
        assert_eq!(groups[7].unit, "000000000007");
        let count = |top: usize| {
            let m = Metrics::new(top);
            m.update(&Snapshot {
                watch: WatchSnapshot {
                    enabled: true,
                    watched_processes: 500,
                    groups: groups.clone(),
                    ..Default::default()
                },
                ..Default::default()
            });
            let t = m.encode();
            let group_series = t.lines().filter(|l| l.starts_with("memwatch_group_")).count();
            let all = t.lines().filter(|l| l.starts_with("memwatch_")).count();
            (group_series, all)
        };
        // Per group shown (alerting first, then the largest): resident,
        // anon, processes, growth and its pending and firing alerts; the
        // rest sum into exe="other".
        let (groups_10, all_10) = count(10);
        assert_eq!(groups_10, 11 * 6, "top 10 and other");
        let (groups_50, _) = count(50);
        assert_eq!(groups_50, 51 * 6);
        eprintln!("500 containers: {groups_10} group series of {all_10} memwatch_ series in all (top 10)");
    }

    #[test]
    fn host_groups_are_bounded_and_alerting_ones_come_first() {
        use crate::collect::snapshot::WatchSnapshot;
        let m = Metrics::new(2);
        let g = |exe: &str, resident: u64, firing: usize| HostGroup {
            exe_name: exe.into(),
            unit: format!("{exe}.service"),
            processes: 1,
            resident_bytes: resident,
            anon_bytes: resident / 2,
            growth_bytes_per_second: if firing > 0 { 2048.0 } else { 0.0 },
            pending: 0,
            firing,
        };
        let s = Snapshot {
            watch: WatchSnapshot {
                enabled: true,
                watched_processes: 4,
                groups: vec![g("big", 1000, 0), g("leaky", 10, 1), g("mid", 500, 0), g("small", 5, 0)],
                alerts_fired_total: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(
            value(
                &t,
                "memwatch_group_alerts{exe=\"leaky\",state=\"firing\",unit=\"leaky.service\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "memwatch_group_resident_bytes{exe=\"big\",unit=\"big.service\"}"),
            Some(1000.0)
        );
        assert_eq!(
            value(&t, "memwatch_group_resident_bytes{exe=\"other\",unit=\"\"}"),
            Some(505.0)
        );
        assert_eq!(
            value(
                &t,
                "memwatch_group_growth_bytes_per_second{exe=\"leaky\",unit=\"leaky.service\"}"
            ),
            Some(2048.0)
        );
        assert_eq!(value(&t, "memwatch_processes_watched"), Some(4.0));
        assert_eq!(value(&t, "memwatch_alerts{state=\"firing\"}"), Some(1.0));
        assert_eq!(
            value(&t, "memwatch_alert_transitions_total{transition=\"fired\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "memwatch_escalations_total{outcome=\"over_budget\"}"),
            Some(0.0)
        );
        assert!(!t.contains("exe=\"mid\""));
    }

    #[test]
    fn only_the_top_executables_get_series() {
        let m = Metrics::new(2);
        let s = Snapshot {
            groups: vec![
                group("a", 10, 1),
                group("b", 30, 2),
                group("c", 20, 3),
                group("d", 5, 4),
            ],
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"b\"}"), Some(30.0));
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"c\"}"), Some(20.0));
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"other\"}"), Some(15.0));
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"a\"}"), None);
        assert_eq!(value(&t, "memwatch_process_allocations_total{exe=\"c\"}"), Some(3.0));
        assert!(!t.contains("pid="));
        // "a" overtakes "c": c's series go away.
        let s = Snapshot {
            groups: vec![group("a", 100, 1), group("b", 30, 2), group("c", 20, 3)],
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"c\"}"), None);
        assert_eq!(value(&t, "memwatch_process_allocations_total{exe=\"c\"}"), None);
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"a\"}"), Some(100.0));
    }
}
