//! When each recorded event is replayed: its real time relative to the first session's start,
//! with the stretches where no visitor was active cut short. Sessions that overlapped in time
//! still overlap exactly as recorded; only dead time between them goes (OTTO's histories span
//! four weeks, most of it empty). Pure.

use precog::eval::SessionRecord;

/// Real-time offsets (ms from the first session's start) of every event of every session, and
/// the span of the whole replay in real milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub offsets: Vec<Vec<u64>>,
    pub span_ms: u64,
}

pub fn plan(sessions: &[SessionRecord], max_idle_ms: u64) -> Timeline {
    let mut order: Vec<usize> = (0..sessions.len())
        .filter(|&i| !sessions[i].events.is_empty())
        .collect();
    order.sort_by_key(|&i| (sessions[i].events[0].ts_ms, i));

    let mut offsets = vec![Vec::new(); sessions.len()];
    let Some(&first) = order.first() else {
        return Timeline {
            offsets,
            span_ms: 0,
        };
    };
    let base = sessions[first].events[0].ts_ms;
    let mut cut = 0u64;
    let mut covered_until = base;
    let mut span_ms = 0;
    for i in order {
        let events = &sessions[i].events;
        let start = events[0].ts_ms;
        if start > covered_until + max_idle_ms {
            cut += start - covered_until - max_idle_ms;
        }
        offsets[i] = events.iter().map(|e| e.ts_ms - base - cut).collect();
        let end = events.last().map_or(start, |e| e.ts_ms);
        covered_until = covered_until.max(end);
        span_ms = span_ms.max(end - base - cut);
    }
    Timeline { offsets, span_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use precog::eval::RecordEvent;

    fn session(id: &str, times: &[u64]) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            events: times
                .iter()
                .map(|&t| RecordEvent {
                    ts_ms: t,
                    kind: "view".into(),
                    ..RecordEvent::default()
                })
                .collect(),
        }
    }

    #[test]
    fn overlapping_sessions_keep_their_real_times() {
        let t = plan(
            &[session("a", &[1000, 5000]), session("b", &[3000, 4000])],
            100,
        );
        assert_eq!(t.offsets, vec![vec![0, 4000], vec![2000, 3000]]);
        assert_eq!(t.span_ms, 4000);
    }

    #[test]
    fn dead_time_between_visits_is_cut_to_the_limit() {
        let day = 86_400_000;
        let t = plan(
            &[session("a", &[0, 60_000]), session("b", &[day, day + 500])],
            10_000,
        );
        assert_eq!(t.offsets[1], vec![70_000, 70_500]);
        assert_eq!(t.span_ms, 70_500);
    }
}
