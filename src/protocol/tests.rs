//! Unit tests of the socket and worker protocols.

use super::*;

fn err_code(line: &str) -> (Value, &'static str) {
    let (id, e) = decode_request(line.as_bytes()).unwrap_err();
    (id, e.code.as_str())
}

#[test]
fn good_requests_decode() {
    let r = decode_request(br#"{"id":7,"op":"ping"}"#).unwrap();
    assert_eq!(r.id, json!(7));
    assert_eq!(r.op, Op::Ping);

    let r = decode_request(
        br#"{"op":"run","session":"s1","process":"calc_shipping","inputs":{"a":1},"x":0}"#,
    )
    .unwrap();
    assert_eq!(r.id, Value::Null);
    let Op::Run {
        session,
        process,
        inputs,
    } = r.op
    else {
        panic!("not a run")
    };
    assert_eq!(
        (session.as_str(), process.as_str()),
        ("s1", "calc_shipping")
    );
    assert_eq!(inputs.unwrap()["a"], json!(1));

    let r = decode_request(
        br#"{"op":"event","session":"s","type":"hover","target":"buy","ms":350,
            "attrs":{"sku":"9"}}"#,
    )
    .unwrap();
    let Op::Event(ev) = r.op else { panic!() };
    assert_eq!(ev.kind, "hover");
    assert_eq!(ev.ms, Some(350));
    assert_eq!(ev.attrs["sku"], json!("9"));

    let r =
        decode_request(br#"{"op":"hint","session":"s","predictions":[{"process":"a","p":0.8}]}"#)
            .unwrap();
    assert_eq!(
        r.op,
        Op::Hint {
            session: "s".into(),
            predictions: vec![("a".into(), 0.8)]
        }
    );
}

#[test]
fn bad_requests_get_stable_codes_and_keep_their_id() {
    assert_eq!(err_code("{nope").1, "bad_json");
    assert_eq!(err_code("[1,2]").1, "bad_request");
    assert_eq!(
        err_code(r#"{"id":"a","op":"fly"}"#),
        (json!("a"), "unknown_op")
    );
    // The message lists the ops there are, so a misspelt one shows beside the right one.
    let (_, e) = decode_request(br#"{"op":"evnt"}"#).unwrap_err();
    assert!(e.message.contains("ping, event, hint"), "{}", e.message);
    assert_eq!(err_code(r#"{"id":3}"#), (json!(3), "bad_request"));
    assert_eq!(err_code(r#"{"op":"run","process":"x"}"#).1, "bad_request");
    assert_eq!(err_code(r#"{"op":"run","session":"s"}"#).1, "bad_request");
    assert_eq!(
        err_code(r#"{"op":"run","session":"s","process":"p","inputs":[1]}"#).1,
        "bad_request"
    );
    assert_eq!(
        err_code(r#"{"op":"event","session":"s","type":"x","ms":-1}"#).1,
        "bad_request"
    );
    assert_eq!(err_code(r#"{"id":{"a":1},"op":"ping"}"#).1, "bad_request");
    let long = format!(r#"{{"op":"end","session":"{}"}}"#, "x".repeat(300));
    assert_eq!(err_code(&long).1, "bad_request");
    assert_eq!(
        err_code(r#"{"op":"hint","session":"s","predictions":[{"process":"a","p":2}]}"#).1,
        "bad_request"
    );
}

#[test]
fn replies_encode_as_one_line() {
    let mut f = Map::new();
    f.insert("result".into(), json!({"ok": 1}));
    let out = encode_ok(&json!(5), f);
    assert!(out.ends_with(b"\n"));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["id"], json!(5));

    let e =
        ErrorReply::new(ErrorCode::WorkerFailed, "worker ran out of memory").with("reason", "oom");
    let v: Value = serde_json::from_slice(&encode_error(&Value::Null, &e)).unwrap();
    assert_eq!(v["error"]["code"], json!("worker_failed"));
    assert_eq!(v["error"]["reason"], json!("oom"));
}

#[test]
fn framer_splits_lines_and_caps_their_size() {
    let mut f = Framer::new(10);
    f.push(b"abc\r\nde");
    assert_eq!(f.next_line(), Some(Ok(b"abc".to_vec())));
    assert_eq!(f.next_line(), None);
    f.push(b"f\n");
    assert_eq!(f.next_line(), Some(Ok(b"def".to_vec())));
    f.push(b"0123456789A");
    assert_eq!(f.next_line(), Some(Err(TooLarge)));

    let mut f = Framer::new(4);
    f.push(b"12345\n");
    assert_eq!(f.next_line(), Some(Err(TooLarge)));
}

#[test]
fn worker_replies_decode() {
    let r = decode_worker_reply(br#"{"job":3,"result":{"x":1}}"#).unwrap();
    assert_eq!(r.job, Some(3));
    assert_eq!(r.kind, WorkerReplyKind::Result(json!({"x":1})));
    let r = decode_worker_reply(br#"{"job":3,"checkpoint":[1]}"#).unwrap();
    assert_eq!(r.kind, WorkerReplyKind::Checkpoint(json!([1])));
    let r = decode_worker_reply(br#"{"job":3,"error":"bad postal code"}"#).unwrap();
    assert_eq!(
        r.kind,
        WorkerReplyKind::Error {
            message: "bad postal code".into(),
            code: None
        }
    );
    assert_eq!(
        decode_worker_reply(b"garbage"),
        Err(WorkerProtocolError::NotJson)
    );
    assert_eq!(
        decode_worker_reply(br#"{"job":1}"#),
        Err(WorkerProtocolError::NoPayload)
    );

    let job = encode_job(9, "p", &Map::new(), None, Some("prepare"));
    let v: Value = serde_json::from_slice(&job).unwrap();
    assert_eq!(
        v,
        json!({"job":9,"process":"p","inputs":{},"state":null,"phase":"prepare"})
    );
}

#[test]
fn canonical_json_sorts_keys_at_every_depth() {
    let a = json!({"b": 1, "a": {"z": [2, {"y": 1, "x": "é"}], "c": null}});
    assert_eq!(
        canonical_json(&a),
        r#"{"a":{"c":null,"z":[2,{"x":"é","y":1}]},"b":1}"#
    );
    let b: serde_json::Value =
        serde_json::from_str(r#"{ "a" : { "z":[2,{"x":"é","y":1}], "c":null }, "b":1 }"#).unwrap();
    assert_eq!(canonical_json(&a), canonical_json(&b));
    assert_eq!(canonical_json(&json!("a\"b")), r#""a\"b""#);
}

#[test]
fn names_the_daemon_keeps_are_limited_in_length() {
    let at_limit = "k".repeat(MAX_NAME_LEN);
    let over = "k".repeat(MAX_NAME_LEN + 1);
    let event = |field: &str, value: &str| {
        json!({"op": "event", "session": "s", "type": "t", field: value}).to_string()
    };
    for field in ["type", "target"] {
        assert!(decode_request(event(field, &at_limit).as_bytes()).is_ok());
        let (_, e) = decode_request(event(field, &over).as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message
                .contains(&format!("`{field}` must be at most 128")),
            "{e:?}"
        );
    }

    let attrs = |key: &str| {
        json!({"op": "event", "session": "s", "type": "input", "attrs": {key: 1}}).to_string()
    };
    assert!(decode_request(attrs(&at_limit).as_bytes()).is_ok());
    let (_, e) = decode_request(attrs(&over).as_bytes()).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("longer than 128 bytes"), "{e:?}");

    let end = |outcome: &str| json!({"op": "end", "session": "s", "outcome": outcome}).to_string();
    assert!(decode_request(end(&at_limit).as_bytes()).is_ok());
    assert_eq!(err_code(&end(&over)).1, "bad_request");
}

#[test]
fn an_event_needs_a_type_and_a_run_event_its_process() {
    for line in [
        r#"{"op":"event","session":"s","type":""}"#,
        r#"{"op":"event","session":"s","type":"run"}"#,
        r#"{"op":"event","session":"s","type":"run","target":null}"#,
    ] {
        let (_, e) = decode_request(line.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{line}: {e:?}");
    }
    let ok = r#"{"op":"event","session":"s","type":"run","target":"calc_shipping"}"#;
    assert!(decode_request(ok.as_bytes()).is_ok());
}

#[test]
fn a_worker_errors_code_is_kept_only_when_it_is_a_plain_name() {
    let code = |line: &str| match decode_worker_reply(line.as_bytes()).unwrap().kind {
        WorkerReplyKind::Error { code, .. } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(r#"{"job":1,"error":"no such sku","code":"unknown_sku"}"#).as_deref(),
        Some("unknown_sku")
    );
    let longest = "a".repeat(WORKER_CODE_MAX);
    let line = format!(r#"{{"job":1,"error":"e","code":"{longest}"}}"#);
    assert_eq!(code(&line), Some(longest));
    for bad in [
        r#""""#,
        r#""Unknown""#,
        r#""a b""#,
        r#""a-b""#,
        r#""ü""#,
        "17",
        "null",
        r#"["x"]"#,
    ] {
        let line = format!(r#"{{"job":1,"error":"e","code":{bad}}}"#);
        assert_eq!(code(&line), None, "{line}");
    }
    let too_long = format!(r#"{{"job":1,"error":"e","code":"{}"}}"#, "a".repeat(65));
    assert_eq!(code(&too_long), None);
}
