//! `/objects` as text (`?format=text`, or a client that asks for it).

use super::ObjectsReport;

/// The text form: the census, then the growth as objgraph prints it.
pub fn render_text(r: &ObjectsReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "process {} — CPython {} ({}), {} objects tracked by the collector, census in {:.3} s{}",
        r.pid,
        r.python.version,
        r.python.build,
        r.objects,
        r.duration_seconds,
        match &r.inconsistency {
            Some(why) => format!(" — NOT CONSISTENT: {why}"),
            None => String::new(),
        }
    );
    let gens: Vec<String> =
        r.gc.generations
            .iter()
            .map(|g| format!("{}/{}", g.count, g.threshold))
            .collect();
    let _ = writeln!(
        out,
        "gc {}: counts/thresholds {}; {} collections, {} collected, {} uncollectable",
        if r.gc.enabled { "enabled" } else { "DISABLED" },
        gens.join(" "),
        r.gc.collections,
        r.gc.collected,
        r.gc.uncollectable
    );
    let _ = writeln!(out, "\n{:>12} {:>14}  type", "count", "bytes");
    for t in &r.types {
        let _ = writeln!(out, "{:>12} {:>14}  {}.{}", t.count, t.bytes, t.module, t.name);
    }
    match (&r.allocator, &r.allocator_unavailable) {
        (Some(a), _) => {
            let _ = writeln!(
                out,
                "\nobject allocator (pymalloc): {} arenas ({} KiB), {} pools in use, {} blocks in use ({} bytes){}",
                a.arenas,
                a.arena_bytes / 1024,
                a.pools,
                a.blocks,
                a.bytes,
                match &a.inconsistency {
                    Some(why) => format!(" — NOT CONSISTENT: {why}"),
                    None => String::new(),
                }
            );
            let _ = writeln!(
                out,
                "{:>6} {:>8} {:>12} {:>14} {:>12}",
                "size", "pools", "blocks", "bytes", "free blocks"
            );
            for c in &a.size_classes {
                let _ = writeln!(
                    out,
                    "{:>6} {:>8} {:>12} {:>14} {:>12}",
                    c.size, c.pools, c.blocks, c.bytes, c.free_blocks
                );
            }
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "\nobject allocator: not read ({why})");
        }
        (None, None) => {}
    }
    if let Some(g) = &r.growth {
        let _ = writeln!(out, "\ngrowth over the last {:.0} s:", g.window_seconds);
        for t in &g.types {
            let _ = writeln!(
                out,
                "{:<40} {:>10} {:>+10} {:>+14} bytes  (peak {})",
                format!("{}.{}", t.module, t.name),
                t.count,
                t.count_change,
                t.bytes_change,
                t.peak_count
            );
        }
    }
    out
}
