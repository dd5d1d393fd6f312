//! The tuner on recorded sequences: a burst, a lull, OOM kills, a job that got slower.

use super::*;

const MIB: u64 = 1 << 20;

fn bounds() -> TuneBounds {
    TuneBounds {
        cpu_min: 10.0,
        cpu_max: 400.0,
        memory_min: 64 * MIB,
        memory_ceiling: 1024 * MIB,
    }
}

fn tick(t: &mut PoolTuner, s: u64, busy: usize, used: f64, mem: u64) -> Vec<QuotaChange> {
    t.observe(PoolObservation {
        now_ms: s * 1000,
        busy,
        cpu_used_pct: Some(used),
        memory_peak: Some(mem),
    })
}

#[test]
fn a_throttled_burst_raises_the_quota_until_it_is_not_throttled() {
    let mut t = PoolTuner::new(bounds(), Some(20.0), Some(256 * MIB));
    let mut quota = vec![20.0];
    for s in 0..10 {
        // One CPU-bound job: it uses whatever the quota lets it, up to one CPU.
        let used = t.cpu_quota.unwrap().min(100.0);
        t.job(JobSample {
            exec_us: 1_000_000,
            cpu_ns: (used * 1e7) as u64,
        });
        for c in tick(&mut t, s, 1, used, 40 * MIB) {
            if c.knob == Knob::CpuQuota {
                assert!(c.new > c.old, "{c:?}");
                assert!(c.why.contains("throttled"), "{c:?}");
                quota.push(c.new);
            }
        }
    }
    let last = *quota.last().unwrap();
    assert!(last >= 100.0, "quota stopped at {last}: {quota:?}");
    assert!(last <= 200.0, "quota overshot to {last}: {quota:?}");
    // Not throttled any more: the quota holds.
    let before = t.cpu_quota;
    tick(&mut t, 11, 1, 100.0, 40 * MIB);
    assert_eq!(t.cpu_quota, before);
}

#[test]
fn a_lull_lowers_the_quota_only_after_the_delay_and_never_below_cpu_min() {
    let mut t = PoolTuner::new(bounds(), Some(300.0), None);
    for _ in 0..20 {
        t.job(JobSample {
            exec_us: 10_000,
            cpu_ns: 1_000_000,
        });
    }
    // Jobs use a tenth of a CPU each, one at a time: 300% is far too much, but not at once.
    assert!(tick(&mut t, 0, 1, 5.0, 0).is_empty());
    assert!(tick(&mut t, 30, 0, 5.0, 0).is_empty());
    let changes = tick(&mut t, 61, 0, 5.0, 0);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(c.knob, Knob::CpuQuota);
    assert!(c.new < 300.0 && c.new >= 10.0, "{c:?}");
    // Small wobbles around the new value change nothing.
    for s in 62..200 {
        assert!(tick(&mut t, s, 1, 8.0, 0).is_empty(), "flapped at {s}");
    }
}

#[test]
fn an_oom_raises_the_limit_and_it_never_falls_below_that_again() {
    let mut t = PoolTuner::new(bounds(), None, Some(256 * MIB));
    let c = t.oom_killed().expect("a raise");
    assert_eq!(c.knob, Knob::MemoryMax);
    assert!(c.new >= (256 * MIB) as f64 * 1.2 - 1.0, "{c:?}");
    let raised = t.memory_max.unwrap();

    // Afterwards the pool is quiet at 20 MiB for a long time: the limit may not go back.
    for s in 0..1000 {
        tick(&mut t, s, 0, 0.0, 20 * MIB);
        assert!(
            t.memory_max.unwrap() >= raised,
            "fell to {:?} at {s}",
            t.memory_max
        );
    }
    // A second kill raises it again, from the raised value.
    let c = t.oom_killed().expect("a second raise");
    assert!(c.new > raised as f64);
}

#[test]
fn repeated_ooms_stop_at_the_ceiling() {
    let mut t = PoolTuner::new(bounds(), None, Some(900 * MIB));
    assert!(t.oom_killed().is_some());
    assert_eq!(t.memory_max, Some(1024 * MIB));
    assert!(t.oom_killed().is_none());
    assert_eq!(t.memory_max, Some(1024 * MIB));
}

#[test]
fn memory_follows_the_recent_peak_with_a_margin() {
    let mut t = PoolTuner::new(bounds(), None, Some(256 * MIB));
    for s in 0..3 {
        tick(&mut t, s, 1, 0.0, 300 * MIB);
    }
    // 300 MiB held under a 256 MiB limit cannot be; a peak at the limit means rise now.
    assert!(t.memory_max.unwrap() >= 450 * MIB, "{:?}", t.memory_max);
}

#[test]
fn a_job_that_got_slower_and_heavier_gets_more_cpu() {
    let mut t = PoolTuner::new(bounds(), Some(100.0), None);
    for s in 0..20 {
        t.job(JobSample {
            exec_us: 10_000,
            cpu_ns: 5_000_000,
        });
        tick(&mut t, s, 1, 50.0, 0);
    }
    let before = t.cpu_quota.unwrap();
    // The same process now runs three at a time, each CPU-bound and ten times longer.
    for s in 20..60 {
        for _ in 0..3 {
            t.job(JobSample {
                exec_us: 100_000,
                cpu_ns: 100_000_000,
            });
        }
        tick(&mut t, s, 3, 80.0, 0);
    }
    let after = t.cpu_quota.unwrap();
    assert!(after >= 300.0, "quota {before} -> {after}");
}

#[test]
fn the_process_book_keeps_percentiles_per_process() {
    let mut b = ProcessBook::default();
    for i in 1..=100u64 {
        b.job(
            "calc_shipping",
            JobSample {
                exec_us: i * 100,
                cpu_ns: i * 50_000,
            },
        );
    }
    let j = b.processes["calc_shipping"].to_json();
    assert_eq!(j["jobs"], 100);
    let p95 = j["run_us"][1].as_u64().unwrap();
    assert!((8_000..=11_500).contains(&p95), "{j}");
}
