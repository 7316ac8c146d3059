//! Growth estimation: does a process's heap grow steadily (a leak), or did it
//! warm up and level off, saw up and down, or jump once?
//!
//! Each of three windows (w, 2w, 4w) is judged on its own: the Theil–Sen
//! slope (the median of pairwise slopes, robust to outliers), a Mann–Kendall
//! trend confidence, and persistence — the share of consecutive sub-windows
//! whose median grew by more than the noise. A leak is growth at or above
//! the minimum rate that persisted through the window, still grows at its
//! end and never shrank. Several windows catch both fast leaks and slow
//! staircases.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds (any origin).
    pub t: f64,
    pub bytes: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The shortest window, seconds; the others are 2× and 4×.
    pub window: f64,
    /// Growth below this many bytes per second is not a leak.
    pub min_rate: f64,
    /// In [0, 1]: persistence × trend confidence needed.
    pub min_confidence: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Not enough history yet.
    Insufficient,
    Flat,
    Shrinking,
    /// Grew, then stopped growing.
    Plateau,
    /// Grows and shrinks in turn.
    Sawtooth,
    /// One jump, otherwise flat.
    Step,
    /// Steady growth, but below the minimum rate or not confident enough.
    Growing,
    Leak,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowEstimate {
    pub seconds: f64,
    /// Bytes per second (Theil–Sen).
    pub rate: f64,
    /// Share of sub-window steps that grew.
    pub persistence: f64,
    pub confidence: f64,
    #[serde(skip)]
    growths: usize,
    #[serde(skip)]
    shrinks: usize,
    #[serde(skip)]
    recent: bool,
    #[serde(skip)]
    first_grew: bool,
    #[serde(skip)]
    oscillating: bool,
    /// Grew beyond the noise in every sub-window, at whatever rate.
    #[serde(skip)]
    steady: bool,
    #[serde(skip)]
    net: f64,
    #[serde(skip)]
    tau: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub verdict: Verdict,
    /// Bytes per second, from the window that decided.
    pub rate: f64,
    pub confidence: f64,
    pub windows: Vec<WindowEstimate>,
}

const SUBWINDOWS: usize = 5;
const MIN_NOISE_BYTES: f64 = 16.0 * 1024.0;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn theil_sen(s: &[Sample]) -> f64 {
    let mut slopes = Vec::with_capacity(s.len() * (s.len() - 1) / 2);
    for i in 0..s.len() {
        for j in i + 1..s.len() {
            let dt = s[j].t - s[i].t;
            if dt > 0.0 {
                slopes.push((s[j].bytes - s[i].bytes) / dt);
            }
        }
    }
    median(&mut slopes)
}

/// One-sided confidence that the series trends up (Mann–Kendall, normal
/// approximation).
fn trend_confidence(s: &[Sample]) -> f64 {
    let n = s.len() as f64;
    let mut stat = 0.0;
    for i in 0..s.len() {
        for j in i + 1..s.len() {
            stat += (s[j].bytes - s[i].bytes).signum();
        }
    }
    let var = n * (n - 1.0) * (2.0 * n + 5.0) / 18.0;
    if var <= 0.0 {
        return 0.0;
    }
    let z = (stat - stat.signum()) / var.sqrt();
    normal_cdf(z)
}

fn normal_cdf(z: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 for erf; plenty for a confidence score.
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erf = 1.0 - poly * (-x * x).exp();
    0.5 * (1.0 + if x >= 0.0 { erf } else { -erf })
}

fn window_estimate(all: &[Sample], seconds: f64, p: &Params) -> Option<WindowEstimate> {
    let end = all.last()?.t;
    let start = end - seconds;
    let s: Vec<Sample> = all.iter().copied().filter(|x| x.t >= start).collect();
    // The window must be (nearly) covered and hold enough samples.
    if s.len() < 2 * SUBWINDOWS || s[0].t > start + seconds * 0.1 {
        return None;
    }
    let rate = theil_sen(&s);
    let t0 = s[0].t;
    let mut intercepts: Vec<f64> = s.iter().map(|x| x.bytes - rate * (x.t - t0)).collect();
    let b = median(&mut intercepts);
    let mut residuals: Vec<f64> = s.iter().map(|x| (x.bytes - b - rate * (x.t - t0)).abs()).collect();
    let mad = median(&mut residuals) * 1.4826;

    let span = (end - s[0].t).max(f64::EPSILON);
    let mut bins: Vec<Vec<f64>> = vec![Vec::new(); SUBWINDOWS];
    for x in &s {
        let k = (((x.t - s[0].t) / span) * SUBWINDOWS as f64) as usize;
        bins[k.min(SUBWINDOWS - 1)].push(x.bytes);
    }
    if bins.iter().any(Vec::is_empty) {
        return None;
    }
    // Noise of a bin's median: the per-sample noise over √n (1.25 for the
    // median's efficiency), three times over.
    let per_bin = bins.iter().map(Vec::len).min().unwrap_or(1) as f64;
    let medians: Vec<f64> = bins.iter_mut().map(|b| median(b)).collect();
    let noise = (3.0 * 1.25 * mad / per_bin.sqrt()).max(MIN_NOISE_BYTES);
    let tau = (0.5 * p.min_rate * seconds / SUBWINDOWS as f64).max(noise);
    let deltas: Vec<f64> = medians.windows(2).map(|w| w[1] - w[0]).collect();
    let growths = deltas.iter().filter(|&&d| d > tau).count();
    let shrinks = deltas.iter().filter(|&&d| d < -tau).count();
    let persistence = growths as f64 / deltas.len() as f64;
    let steady = deltas.iter().all(|&d| d > noise);
    Some(WindowEstimate {
        seconds,
        rate,
        persistence,
        confidence: persistence * trend_confidence(&s),
        growths,
        shrinks,
        recent: deltas.last().is_some_and(|&d| d > tau),
        first_grew: deltas.first().is_some_and(|&d| d > tau),
        oscillating: oscillates(&s),
        steady,
        net: medians[SUBWINDOWS - 1] - medians[0],
        tau,
    })
}

/// At least two large rises and two large drops between consecutive samples:
/// memory that is allocated and released in turn.
fn oscillates(s: &[Sample]) -> bool {
    let (lo, hi) = s
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x.bytes), hi.max(x.bytes)));
    let big = (0.25 * (hi - lo)).max(4.0 * MIN_NOISE_BYTES);
    let steps = s.windows(2).map(|w| w[1].bytes - w[0].bytes);
    let (rises, drops) = steps.fold((0, 0), |(r, d), x| (r + (x > big) as usize, d + (x < -big) as usize));
    rises >= 2 && drops >= 2
}

fn is_leak(w: &WindowEstimate, p: &Params) -> bool {
    w.rate >= p.min_rate && w.shrinks == 0 && w.recent && w.persistence >= 0.75 && w.confidence >= p.min_confidence
}

/// Judges a series of heap samples (oldest first).
pub fn estimate(samples: &[Sample], p: &Params) -> Estimate {
    let windows: Vec<WindowEstimate> = [1.0, 2.0, 4.0]
        .iter()
        .filter_map(|k| window_estimate(samples, p.window * k, p))
        .collect();
    let leak = windows
        .iter()
        .filter(|w| is_leak(w, p))
        .max_by(|a, b| a.confidence.total_cmp(&b.confidence));
    if let Some(w) = leak {
        return Estimate {
            verdict: Verdict::Leak,
            rate: w.rate,
            confidence: w.confidence,
            windows: windows.clone(),
        };
    }
    let Some(w) = windows.last() else {
        return Estimate {
            verdict: Verdict::Insufficient,
            rate: 0.0,
            confidence: 0.0,
            windows,
        };
    };
    // Teeth show in the shortest window whose sub-windows resolve them.
    let verdict = if windows
        .iter()
        .any(|w| (w.growths > 0 && w.shrinks > 0) || w.oscillating)
    {
        Verdict::Sawtooth
    } else if (w.persistence >= 0.75 && w.recent || w.steady) && w.rate > 0.0 {
        Verdict::Growing
    } else if w.growths == 1 && w.shrinks == 0 {
        Verdict::Step
    } else if w.growths > 1 && !w.recent && w.first_grew {
        Verdict::Plateau
    } else if w.net < -w.tau {
        Verdict::Shrinking
    } else if w.growths > 1 {
        Verdict::Plateau
    } else {
        Verdict::Flat
    };
    Estimate {
        verdict,
        rate: w.rate,
        confidence: w.confidence,
        windows: windows.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KB: f64 = 1024.0;
    const MB: f64 = 1024.0 * 1024.0;
    const STEP: f64 = 2.0; // sampling interval, seconds
    const RUN: f64 = 300.0; // seconds simulated

    use crate::watch::alert::{Alert, Timing, Transition};

    fn params() -> Params {
        Params {
            window: 30.0,
            min_rate: 32.0 * KB,
            min_confidence: 0.6,
        }
    }

    /// Deterministic noise in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    type Shape = fn(f64) -> f64;

    /// Runs the detector as the daemon would, sample by sample; returns the
    /// time of the first Leak verdict.
    fn first_flag(shape: Shape, noise: f64, seed: u64) -> Option<f64> {
        let mut rng = Rng(seed * 2_654_435_761 + 1);
        let mut samples = Vec::new();
        let mut t = 0.0;
        while t <= RUN {
            samples.push(Sample {
                t,
                bytes: 50.0 * MB + shape(t) + noise * rng.next(),
            });
            if estimate(&samples, &params()).verdict == Verdict::Leak {
                return Some(t);
            }
            t += STEP;
        }
        None
    }

    const SEEDS: u64 = 40;

    fn false_positives(shape: Shape, noise: f64) -> usize {
        (1..=SEEDS).filter(|&s| first_flag(shape, noise, s).is_some()).count()
    }

    /// (detected runs, median delay seconds, worst delay seconds)
    fn delays(shape: Shape, noise: f64) -> (usize, f64, f64) {
        let mut d: Vec<f64> = (1..=SEEDS).filter_map(|s| first_flag(shape, noise, s)).collect();
        let n = d.len();
        let worst = d.iter().cloned().fold(0.0, f64::max);
        (n, median(&mut d), worst)
    }

    fn plateau(t: f64) -> f64 {
        (t.min(12.0)) * 1.0 * MB
    }
    fn sawtooth(t: f64) -> f64 {
        (t % 10.0) * 1.0 * MB
    }
    fn step(t: f64) -> f64 {
        if t >= 60.0 { 40.0 * MB } else { 0.0 }
    }
    fn leak_200k(t: f64) -> f64 {
        t * 200.0 * KB
    }
    fn slow_leak(t: f64) -> f64 {
        t * 40.0 * KB
    }
    fn too_slow(t: f64) -> f64 {
        t * 8.0 * KB
    }
    fn staircase(t: f64) -> f64 {
        (t / 20.0).floor() * 2.0 * MB
    }
    fn flat(_: f64) -> f64 {
        0.0
    }
    fn leak_with_sawtooth(t: f64) -> f64 {
        t * 200.0 * KB + (t % 10.0) * 100.0 * KB
    }

    /// Pending alerts that went back to nothing, and whether the alert
    /// fired, over a run of `shape` with alerts timed by `t`.
    fn alert_run(shape: Shape, noise: f64, seed: u64, t: &Timing) -> (usize, bool) {
        let mut rng = Rng(seed * 2_654_435_761 + 1);
        let (mut samples, mut alert, mut dropped, mut fired) = (Vec::new(), Alert::Inactive, 0, false);
        let mut now = 0.0;
        while now <= RUN {
            samples.push(Sample {
                t: now,
                bytes: 50.0 * MB + shape(now) + noise * rng.next(),
            });
            let leaking = estimate(&samples, &params()).verdict == Verdict::Leak;
            let (next, tr) = alert.step(leaking, now, t);
            dropped += usize::from(matches!(alert, Alert::Pending { .. }) && next == Alert::Inactive);
            fired |= tr == Some(Transition::Fired);
            alert = next;
            now += STEP;
        }
        (dropped, fired)
    }

    #[test]
    fn a_noisy_leak_stays_pending_until_it_fires() {
        // A slow leak (40 KiB/s) under 1 MiB of noise: some evaluations miss it.
        let (noise, shape) = (1.0 * MB, slow_leak as Shape);
        let with_grace = Timing::new(60.0, 60.0, STEP);
        let without = Timing {
            pending_grace: 0.0,
            ..with_grace
        };
        let runs = |t: &Timing| (1..=SEEDS).map(|s| alert_run(shape, noise, s, t)).collect::<Vec<_>>();
        let dropped = |r: &[(usize, bool)]| r.iter().map(|x| x.0).sum::<usize>();
        let fired = |r: &[(usize, bool)]| r.iter().filter(|x| x.1).count();
        let (a, b) = (runs(&without), runs(&with_grace));
        println!(
            "noisy slow leak, {SEEDS} seeds: pending alerts dropped {} without a grace, {} with {} s; fired {} and {}",
            dropped(&a),
            dropped(&b),
            with_grace.pending_grace,
            fired(&a),
            fired(&b)
        );
        assert!(
            dropped(&a) >= 100,
            "the series is noisy enough to flicker: {}",
            dropped(&a)
        );
        assert!(dropped(&b) * 4 <= dropped(&a), "{} vs {}", dropped(&b), dropped(&a));
        assert!(fired(&b) >= 30, "fired in {} of {SEEDS} runs", fired(&b));
        // The grace chains no false alarms out of quiet series.
        for quiet in [flat as Shape, plateau, sawtooth, step, too_slow] {
            assert!(runs_fired(quiet, 64.0 * KB, &with_grace) == 0);
        }
    }

    fn runs_fired(shape: Shape, noise: f64, t: &Timing) -> usize {
        (1..=SEEDS).filter(|&s| alert_run(shape, noise, s, t).1).count()
    }

    #[test]
    fn false_positives_and_detection_delays() {
        println!("\nleak detector on synthetic series ({SEEDS} seeds each, a sample every {STEP} s for {RUN} s)");
        println!("{:<38} {:>16}", "non-leaking series", "false positives");
        let quiet = [
            ("flat, ±64 KiB noise", flat as Shape, 64.0 * KB),
            ("warm-up 12 MiB in 12 s, then plateau", plateau as Shape, 64.0 * KB),
            ("sawtooth 0–10 MiB, period 10 s", sawtooth as Shape, 64.0 * KB),
            ("one step of 40 MiB", step as Shape, 64.0 * KB),
            ("8 KiB/s (below the 32 KiB/s minimum)", too_slow as Shape, 16.0 * KB),
        ];
        for (name, shape, noise) in quiet {
            let fp = false_positives(shape, noise);
            println!("{name:<38} {fp:>10}/{SEEDS}");
            assert_eq!(fp, 0, "{name}");
        }
        println!(
            "{:<38} {:>9} {:>12} {:>10}",
            "leaking series", "detected", "median delay", "worst"
        );
        let leaks = [
            ("200 KiB/s, ±64 KiB noise", leak_200k as Shape, 64.0 * KB, 60.0),
            ("200 KiB/s, ±2 MiB noise", leak_200k as Shape, 2.0 * MB, 130.0),
            (
                "200 KiB/s under a 1 MiB sawtooth",
                leak_with_sawtooth as Shape,
                64.0 * KB,
                150.0,
            ),
            ("40 KiB/s, ±64 KiB noise", slow_leak as Shape, 64.0 * KB, 150.0),
            ("staircase: +2 MiB every 20 s", staircase as Shape, 64.0 * KB, 200.0),
        ];
        for (name, shape, noise, bound) in leaks {
            let (n, med, worst) = delays(shape, noise);
            println!("{name:<38} {n:>6}/{SEEDS} {med:>10.0} s {worst:>8.0} s");
            assert_eq!(n as u64, SEEDS, "{name}: every run must be caught");
            assert!(worst <= bound, "{name}: worst delay {worst} s > {bound} s");
        }
    }

    #[test]
    fn verdicts_name_the_shape() {
        let series = |shape: Shape| -> Vec<Sample> {
            let mut rng = Rng(7);
            (0..=150)
                .map(|i| i as f64 * STEP)
                .map(|t| Sample {
                    t,
                    bytes: 50.0 * MB + shape(t) + 16.0 * KB * rng.next(),
                })
                .collect()
        };
        assert_eq!(estimate(&series(leak_200k), &params()).verdict, Verdict::Leak);
        assert_eq!(estimate(&series(flat), &params()).verdict, Verdict::Flat);
        assert_eq!(estimate(&series(sawtooth), &params()).verdict, Verdict::Sawtooth);
        assert_eq!(estimate(&series(too_slow), &params()).verdict, Verdict::Growing);
        assert_eq!(
            estimate(&series(|t| -t * 100.0 * KB), &params()).verdict,
            Verdict::Shrinking
        );
        assert_eq!(
            estimate(&series(plateau)[..10], &params()).verdict,
            Verdict::Insufficient
        );
        let e = estimate(&series(leak_200k), &params());
        assert!((e.rate - 200.0 * KB).abs() < 20.0 * KB, "rate {}", e.rate);
        assert!(e.confidence > 0.9);
        assert_eq!(e.windows.len(), 3);
    }

    #[test]
    fn a_plateau_after_growth_is_a_plateau_or_flat() {
        let s: Vec<Sample> = (0..=40)
            .map(|i| i as f64 * STEP)
            .map(|t| Sample {
                t,
                bytes: plateau(t + 100.0),
            })
            .collect();
        let v = estimate(&s, &params()).verdict;
        assert!(matches!(v, Verdict::Flat | Verdict::Plateau), "{v:?}");
    }
}
