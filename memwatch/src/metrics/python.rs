//! Python object censuses of tracked processes, per executable: the most
//! numerous types and the collector's totals. Bounded labels: `exe` (the
//! top executables, else `other`) and `type` (the top types of each, else
//! `other`); no pid.

use std::collections::HashMap;

use prometheus::{IntGaugeVec, Registry};

use super::series::gauge_vec;
use crate::objects::Taken;

/// Types per executable with their own series.
pub const TOP_TYPES: usize = 10;

pub struct PythonMetrics {
    objects: IntGaugeVec,
    collections: IntGaugeVec,
    uncollectable: IntGaugeVec,
    top_exes: usize,
}

/// Per executable: objects by "module.type", and the collector's totals.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExeCensus {
    pub types: Vec<(String, u64)>,
    pub collections: u64,
    pub uncollectable: u64,
}

/// Sums the censuses by executable, keeps the `top_exes` executables with
/// the most objects (the rest as `other`) and each one's [`TOP_TYPES`]
/// types (the rest as `other`).
/// Objects by type, collections, uncollectable.
type Sums = (HashMap<String, u64>, u64, u64);

pub fn by_exe(censuses: &[(String, Taken)], top_exes: usize) -> HashMap<String, ExeCensus> {
    let mut sums: HashMap<String, Sums> = HashMap::new();
    for (exe, t) in censuses {
        let e = sums.entry(exe.clone()).or_default();
        for ty in &t.census.types {
            *e.0.entry(format!("{}.{}", ty.module, ty.name)).or_default() += ty.count;
        }
        e.1 += t.census.gc.collections.iter().sum::<u64>();
        e.2 += t.census.gc.uncollectable.iter().sum::<u64>();
    }
    let mut exes: Vec<(String, Sums)> = sums.into_iter().collect();
    exes.sort_by_key(|(name, (types, ..))| (std::cmp::Reverse(types.values().sum::<u64>()), name.clone()));
    let mut out: HashMap<String, ExeCensus> = HashMap::new();
    for (i, (exe, (types, collections, uncollectable))) in exes.into_iter().enumerate() {
        let name = if i < top_exes { exe } else { "other".to_string() };
        let e = out.entry(name).or_default();
        let mut merged: HashMap<String, u64> = e.types.drain(..).collect();
        for (t, n) in types {
            *merged.entry(t).or_default() += n;
        }
        let mut types: Vec<(String, u64)> = merged.into_iter().collect();
        types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if types.len() > TOP_TYPES {
            let rest: u64 = types[TOP_TYPES..].iter().map(|t| t.1).sum();
            types.truncate(TOP_TYPES);
            types.push(("other".to_string(), rest));
        }
        e.types = types;
        e.collections += collections;
        e.uncollectable += uncollectable;
    }
    out
}

impl PythonMetrics {
    pub fn register(r: &Registry, top_exes: usize) -> Self {
        PythonMetrics {
            objects: gauge_vec(
                r,
                "memwatch_python_objects",
                "Objects the garbage collector tracks in tracked Python processes, by executable and type (top types; the rest as other), from the last census.",
                &["exe", "type"],
            ),
            collections: gauge_vec(
                r,
                "memwatch_python_gc_collections",
                "Collections the tracked Python processes of an executable have run, all generations, at the last census.",
                &["exe"],
            ),
            uncollectable: gauge_vec(
                r,
                "memwatch_python_gc_uncollectable",
                "Uncollectable objects the collector found in the tracked Python processes of an executable, at the last census.",
                &["exe"],
            ),
            top_exes,
        }
    }

    /// Replaces every series with the latest censuses'.
    pub fn update(&self, censuses: &[(String, Taken)]) {
        self.objects.reset();
        self.collections.reset();
        self.uncollectable.reset();
        for (exe, c) in by_exe(censuses, self.top_exes) {
            for (ty, n) in &c.types {
                self.objects
                    .with_label_values(&[exe.as_str(), ty.as_str()])
                    .set(*n as i64);
            }
            self.collections
                .with_label_values(&[exe.as_str()])
                .set(c.collections as i64);
            self.uncollectable
                .with_label_values(&[exe.as_str()])
                .set(c.uncollectable as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(types: &[(&str, u64)]) -> Taken {
        crate::objects::fake_taken(0.0, "m", types)
    }

    #[test]
    fn types_and_executables_are_capped_with_other() {
        let many: Vec<(String, u64)> = (0..15).map(|i| (format!("T{i}"), 100 - i)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let censuses = vec![
            ("web".to_string(), taken(&many)),
            ("web".to_string(), taken(&[("T0", 1)])),
            ("worker".to_string(), taken(&[("Job", 5)])),
            ("cron".to_string(), taken(&[("Task", 2)])),
        ];
        let m = by_exe(&censuses, 2);
        let web = &m["web"];
        assert_eq!(web.types.len(), TOP_TYPES + 1);
        assert_eq!(web.types[0], ("m.T0".to_string(), 101));
        assert_eq!(
            web.types[TOP_TYPES],
            ("other".to_string(), (10..15).map(|i| 100 - i).sum())
        );
        assert_eq!((web.collections, web.uncollectable), (12, 4));
        assert!(m.contains_key("worker"));
        assert_eq!(m["other"].types, [("m.Task".to_string(), 2)]);
        assert_eq!(m.len(), 3);
    }
}
