//! `eval` on small files written by the test in each format it reads: the readers find the
//! sessions and events, the report has the documented JSON shape, and a visit pattern that
//! depends on dwell is learned better than the first-order chain can.

use std::fs;
use std::path::Path;

use precog::eval::{EvalReport, Format, evaluate, read_sessions};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("the test file is written");
    path
}

#[test]
fn formats_parse_from_their_names() {
    for (name, format) in [
        ("jd", Format::Jd),
        ("rees46", Format::Rees46),
        ("otto", Format::Otto),
        ("events", Format::Events),
    ] {
        assert_eq!(name.parse::<Format>().unwrap(), format);
    }
    let err = "csv".parse::<Format>().unwrap_err().to_string();
    assert!(err.contains("jd, rees46, otto or events"), "{err}");
}

#[test]
fn jd_sessions_get_deterministic_times_from_their_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "jd.txt",
        "11+5+1+10+30 11+7+1+20+30 12+2+1+5+5\n13+1+1+3+3 13+9+1+0+3\n",
    );
    let sessions = read_sessions(&path, Format::Jd).unwrap();
    assert_eq!(sessions.len(), 2);
    let first = &sessions[0].events;
    assert_eq!(first.len(), 3);
    assert_eq!(first[1].ts_ms - first[0].ts_ms, 10_000);
    assert_eq!(first[0].kind, "search_to_product");
    assert_eq!(first[1].kind, "detail_specification");
    assert_eq!(first[1].dwell_ms, Some(30_000));
    assert_eq!(first[0].gap_ms, Some(10_000));
    assert_eq!(first[2].gap_ms, None);
    assert_eq!(sessions[1].events[1].kind, "cart");
    assert!(sessions[1].events[0].ts_ms > first[0].ts_ms);
    assert_eq!(read_sessions(&path, Format::Jd).unwrap(), sessions);

    let bad = write(dir.path(), "bad.txt", "11+5+1\n");
    let err = read_sessions(&bad, Format::Jd).unwrap_err().to_string();
    assert!(err.contains("bad.txt:1"), "{err}");
}

#[test]
fn rees46_rows_group_by_session_and_leave_the_cut_off_tail_out() {
    let dir = tempfile::tempdir().unwrap();
    let header = "event_time,event_type,product_id,category_id,category_code,brand,price,\
                  user_id,user_session\n";
    let rows = [
        "2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.0,7,s1",
        "2019-10-01 00:00:05 UTC,view,2,2,a.b,x,1.0,8,s2",
        "2019-10-01 00:00:10 UTC,cart,1,2,a.b,x,1.0,7,s1",
        "2019-10-01 00:30:00 UTC,view,3,2,,,1.0,9,s3",
    ];
    let path = write(
        dir.path(),
        "r.csv",
        &format!("{header}{}\n", rows.join("\n")),
    );
    let sessions = read_sessions(&path, Format::Rees46).unwrap();
    assert_eq!(sessions.len(), 2, "s3 lies in the last ten minutes");
    assert_eq!(sessions[0].id, "s1");
    assert_eq!(sessions[0].events[1].kind, "cart");
    assert_eq!(sessions[0].events[1].item.as_deref(), Some("1"));
    assert_eq!(sessions[0].events[0].gap_ms, Some(10_000));
}

#[test]
fn otto_histories_split_into_visits_at_half_hour_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let line = concat!(
        r#"{"session":5,"events":[{"aid":1,"ts":1000,"type":"clicks"},"#,
        r#"{"aid":1,"ts":2000,"type":"carts"},{"aid":2,"ts":4000000,"type":"clicks"}]}"#
    );
    let path = write(dir.path(), "o.jsonl", &format!("{line}\n"));
    let sessions = read_sessions(&path, Format::Otto).unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].events.len(), 2);
    assert_eq!(sessions[0].events[1].kind, "carts");
}

/// Visits where what follows a product view depends on how long the visitor stayed: a long
/// dwell leads to the specification, a short one to the next product. A first-order chain
/// cannot see the dwell; precog can.
fn dwell_pattern() -> String {
    let mut lines = Vec::new();
    let mut ts = 1_700_000_000_000u64;
    for s in 0..300 {
        for i in 0..12 {
            let long = (s * 7 + i * 3) % 5 < 2;
            let sku = format!("p{s}-{i}");
            let dwell = if long { 90_000 } else { 2_000 };
            let head = format!(r#"{{"session":"v{s}","ts":{ts},"type":"page_view","#);
            lines.push(head + &format!(r#""attrs":{{"sku":"{sku}"}},"dwell_ms":{dwell}}}"#));
            ts += 1000;
            if long {
                lines.push(format!(
                    r#"{{"session":"v{s}","ts":{ts},"type":"spec","attrs":{{"sku":"{sku}"}}}}"#
                ));
                ts += 1000;
            }
        }
    }
    lines.join("\n")
}

#[test]
fn events_files_are_scored_and_the_report_has_its_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "e.jsonl", &dwell_pattern());
    let report: EvalReport = evaluate(&path, Format::Events).unwrap();
    assert_eq!(report.sessions, 300);
    assert!(report.events > 3600);

    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 3, "{json}");
    for model in ["precog", "popularity", "markov1"] {
        for score in ["hit@1", "hit@3", "mrr"] {
            let x = json["models"][model][score].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{model} {score} = {x}");
        }
    }
    let (p, m) = (report.models.precog, report.models.markov1);
    assert!(p.hit1 > m.hit1 + 0.15, "precog {p:?} markov {m:?}");
    let table = report.to_string();
    assert!(
        table.contains("precog") && table.contains("markov1"),
        "{table}"
    );
}
