//! Property tests of the socket and worker protocol decoders: arbitrary bytes never panic, valid
//! requests survive a round trip through their JSON form, and the framer never holds a line past
//! its limit.

use precog::protocol::{
    ErrorCode, Framer, Op, WorkerReplyKind, decode_request, decode_worker_reply, encode_error,
    encode_job, encode_ok,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn scalar_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "[a-z0-9-]{0,12}".prop_map(Value::from),
    ]
}

fn session() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:.-]{1,64}"
}

fn inputs() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        "[a-z_]{1,12}",
        prop_oneof![
            any::<i32>().prop_map(Value::from),
            "\\PC{0,16}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ],
        0..5,
    )
    .prop_map(|m| m.into_iter().collect())
}

/// A valid request as the JSON a client would send, with the op it must decode to.
fn valid_request() -> impl Strategy<Value = (Value, Op)> {
    prop_oneof![
        Just((json!({"op": "ping"}), Op::Ping)),
        Just((json!({"op": "stats"}), Op::Stats)),
        (session(), "[a-z_]{1,24}", inputs()).prop_map(|(s, p, i)| {
            (
                json!({"op": "run", "session": s, "process": p, "inputs": i}),
                Op::Run {
                    session: s,
                    process: p,
                    inputs: Some(i),
                },
            )
        }),
        (session(), prop::option::of(0u64..5000)).prop_map(|(s, n)| {
            (
                json!({"op": "predict", "session": s, "n": n}),
                Op::Predict {
                    session: s,
                    n: n.map(|n| n.min(1000) as usize),
                },
            )
        }),
        (session(), prop::option::of("[a-z]{1,10}")).prop_map(|(s, o)| {
            (
                json!({"op": "end", "session": s, "outcome": o}),
                Op::End {
                    session: s,
                    outcome: o,
                },
            )
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_keep_a_scalar_id(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        match decode_request(&bytes) {
            Ok(req) => prop_assert!(!req.id.is_array() && !req.id.is_object()),
            Err((id, e)) => {
                prop_assert!(!id.is_array() && !id.is_object());
                let line = encode_error(&id, &e);
                prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                let back: Value = serde_json::from_slice(&line).unwrap();
                prop_assert_eq!(&back["error"]["code"], &json!(e.code.as_str()));
            }
        }
        let _ = decode_worker_reply(&bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        fields in prop::collection::btree_map(
            prop_oneof![
                Just("op".to_string()), Just("session".to_string()),
                Just("process".to_string()), Just("inputs".to_string()),
                Just("id".to_string()), Just("n".to_string()), Just("type".to_string()),
                Just("predictions".to_string()), Just("depth".to_string()),
                "[a-z]{1,6}",
            ],
            prop_oneof![
                Just(json!("ping")), Just(json!("run")), Just(json!("event")),
                Just(json!("hint")), Just(json!([{"process": "a", "p": 0.5}])),
                Just(json!(null)), Just(json!({})), Just(json!([1, 2])),
                any::<f64>().prop_map(|f| json!(f)), any::<i64>().prop_map(|i| json!(i)),
                "\\PC{0,8}".prop_map(Value::from),
            ],
            0..8,
        )
    ) {
        let obj: Map<String, Value> = fields.into_iter().collect();
        let line = serde_json::to_vec(&Value::Object(obj)).unwrap();
        if let Err((_, e)) = decode_request(&line) {
            prop_assert!(e.code != ErrorCode::BadJson, "valid JSON reported as bad_json");
        }
    }

    #[test]
    fn valid_requests_round_trip((body, op) in valid_request(), id in scalar_id()) {
        let mut obj = body.as_object().unwrap().clone();
        obj.insert("id".into(), id.clone());
        obj.insert("unknown_field".into(), json!({"ignored": true}));
        let line = serde_json::to_vec(&Value::Object(obj)).unwrap();
        let req = decode_request(&line).unwrap();
        prop_assert_eq!(&req.id, &id);
        prop_assert_eq!(req.op, op);

        let reply = encode_ok(&id, Map::new());
        let back: Value = serde_json::from_slice(&reply).unwrap();
        prop_assert_eq!(&back["id"], &id);
    }

    #[test]
    fn the_framer_never_holds_more_than_its_limit(
        max in 16usize..256,
        reads in prop::collection::vec(
            prop::collection::vec(prop_oneof![9 => any::<u8>(), 1 => Just(b'\n')], 0..300),
            0..20,
        ),
    ) {
        let mut framer = Framer::new(max);
        let mut sent = Vec::new();
        let mut got = Vec::new();
        'stream: for read in &reads {
            framer.push(read);
            sent.extend_from_slice(read);
            while let Some(line) = framer.next_line() {
                match line {
                    Ok(line) => {
                        prop_assert!(line.len() <= max);
                        got.push(line);
                    }
                    Err(_) => break 'stream,
                }
            }
            prop_assert!(framer.pending() <= max, "held {} > {max}", framer.pending());
        }
        // Every complete line came out as sent (a trailing CR is dropped), up to a refusal.
        let expected: Vec<Vec<u8>> = sent
            .split(|&b| b == b'\n')
            .take(got.len())
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn worker_jobs_and_replies_round_trip(job in any::<u64>(), i in inputs(), r in inputs()) {
        let line = encode_job(job, "p", &i, None, None);
        let v: Value = serde_json::from_slice(&line).unwrap();
        prop_assert_eq!(&v["inputs"], &Value::Object(i));

        let reply = serde_json::to_vec(&json!({"job": job, "result": r})).unwrap();
        let decoded = decode_worker_reply(&reply).unwrap();
        prop_assert_eq!(decoded.job, Some(job));
        prop_assert_eq!(decoded.kind, WorkerReplyKind::Result(Value::Object(r)));
    }
}
