//! Black-box tests of what a connection may hold: its slot while it never finishes a request
//! line or never reads its replies, its share of the memory held by partial lines, and the
//! connection limit after a reload (and the log line that says so); and that the errors the
//! server answers itself are counted.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Daemon, wait_until};
use serde_json::{Value, json};

/// One ping on a new connection; `None` when the connection fails.
fn ping(d: &Daemon) -> Option<Value> {
    common::Conn::open(&d.socket)
        .ok()?
        .try_call(&json!({"op": "ping"}))
}

/// A connection the daemon serves: with a low `max_connections`, one opened while an earlier
/// client's slot is still being given back is refused, so this retries until a ping is answered.
fn served(d: &Daemon) -> common::Conn {
    let mut conn = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let Ok(mut c) = d.try_connect() else {
            return false;
        };
        let served = c
            .try_call(&json!({"op": "ping"}))
            .is_some_and(|r| r["ok"] == json!(true));
        if served {
            conn = Some(c);
        }
        served
    });
    assert!(ok, "no connection was served");
    conn.unwrap()
}

/// Whether the daemon closes `s` within `limit` (end of stream or a reset).
fn closed_within(s: &mut UnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn a_connection_that_never_finishes_a_line_is_closed_after_idle_close() {
    let d = Daemon::start_with("idle_close = \"1s\"", "");
    // Part of a line at once, and one that trickles in a byte at a time.
    let mut partial = UnixStream::connect(&d.socket).unwrap();
    partial.write_all(br#"{"op":"ping","pad":""#).unwrap();
    let mut trickle = UnixStream::connect(&d.socket).unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let started = Instant::now();
    let dripping = std::thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(20) {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(
        closed_within(&mut partial, Duration::from_secs(15)),
        "a connection holding part of a line stayed open past idle_close"
    );
    assert!(
        closed_within(&mut trickle, Duration::from_secs(15)),
        "a connection sending a line a byte at a time stayed open past idle_close"
    );
    dripping.join().unwrap();
    assert_eq!(ping(&d).map(|r| r["ok"].clone()), Some(json!(true)));
}

#[test]
fn a_connection_finishing_lines_now_and_then_stays_open() {
    let d = Daemon::start_with("idle_close = \"2s\"", "");
    let mut c = d.connect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        // Each request arrives in two parts, the line ending in the second.
        c.send_raw(br#"{"op":"ping","#).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        c.send_raw(b"\"id\":1}\n").unwrap();
        assert_eq!(c.recv()["ok"], json!(true));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn partial_lines_of_all_connections_are_bounded_in_total() {
    // 64 times max_line: 256 KiB, so at most 87 connections of 3000 bytes each.
    let d = Daemon::start_with("max_line = \"4K\"\nidle_close = \"60s\"", "");
    let part = [b"{\"op\":\"ping\",\"pad\":\"".as_slice(), &[b'x'; 2980]].concat();
    let mut conns: Vec<Option<BufReader<UnixStream>>> = (0..120)
        .map(|_| {
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(&part).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            Some(BufReader::new(s))
        })
        .collect();
    let mut refused = 0;
    let enough = wait_until(Duration::from_secs(20), || {
        for slot in conns.iter_mut() {
            let Some(c) = slot else { continue };
            let mut line = String::new();
            match c.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    let r: Value = serde_json::from_str(&line).unwrap();
                    assert_eq!(r["error"]["code"], json!("overloaded"), "{r}");
                    refused += 1;
                    *slot = None;
                }
                _ => {}
            }
        }
        refused >= 120 - 87
    });
    assert!(enough, "only {refused} of 120 partial lines were refused");
    // A whole request is never refused for memory it does not keep.
    assert_eq!(ping(&d).map(|r| r["ok"].clone()), Some(json!(true)));
}

#[test]
fn a_client_that_reads_no_replies_gives_its_slot_back() {
    let d = Daemon::start_with("max_connections = 2\nidle_close = \"1s\"", "");
    let flood = || {
        let held = served(&d);
        let mut s = held.writer.try_clone().unwrap();
        s.set_nonblocking(true).unwrap();
        let lines = b"{\"op\":\"stats\"}\n".repeat(50);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Until the daemon stops reading: its pipeline is full and its replies back up.
        while Instant::now() < deadline {
            match s.write(&lines) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        held
    };
    let _held = [flood(), flood()];
    let served = wait_until(Duration::from_secs(20), || {
        ping(&d).is_some_and(|r| r["ok"] == json!(true))
    });
    assert!(served, "clients that read nothing kept every slot");
}

#[test]
fn a_reload_applies_a_new_max_connections() {
    let d = Daemon::start_with("max_connections = 2", "");
    let mut held: Vec<common::Conn> = (0..2).map(|_| served(&d)).collect();
    let refused = ping(&d).expect("a reply");
    assert_eq!(refused["error"]["code"], json!("overloaded"), "{refused}");

    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload(&text.replace("max_connections = 2", "max_connections = 50"));
    let served = wait_until(Duration::from_secs(10), || {
        ping(&d).is_some_and(|r| r["ok"] == json!(true))
    });
    assert!(served, "a third client still refused: {:?}", ping(&d));
    // The log says what the reload changed.
    let said = wait_until(Duration::from_secs(10), || {
        d.log().contains("[daemon] max_connections 2 -> 50")
    });
    assert!(said, "{}", d.log());

    d.reload(&text.replace("max_connections = 2", "max_connections = 1"));
    let refused = wait_until(Duration::from_secs(10), || {
        ping(&d).is_some_and(|r| r["error"]["code"] == json!("overloaded"))
    });
    assert!(refused, "a lowered limit was not applied");
    let r = ping(&d).unwrap();
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("at most 1 connection"), "{r}");
    for c in &mut held {
        assert_eq!(c.call(&json!({"op": "ping"}))["ok"], json!(true));
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn errors_the_server_answers_are_counted_by_code() {
    let port = free_port();
    let keys =
        format!("max_line = \"1K\"\nmax_connections = 2\nmetrics_listen = \"127.0.0.1:{port}\"");
    let d = Daemon::start_with(&keys, "");
    let mut c = served(&d);
    for (line, code) in [
        ("{nope", "bad_json"),
        (r#"{"op":"fly"}"#, "unknown_op"),
        (r#"{"op":"event","session":"s"}"#, "bad_request"),
    ] {
        c.send_raw(format!("{line}\n").as_bytes()).unwrap();
        assert_eq!(c.recv()["error"]["code"], json!(code), "{line}");
    }
    let mut long = d.connect();
    long.send_raw(&[b'x'; 2048]).unwrap();
    long.send_raw(b"\n").unwrap();
    assert_eq!(long.recv()["error"]["code"], json!("too_large"));
    drop(long);
    // Both slots held (once the closed connection has given its back): one more is refused.
    let _other = served(&d);
    let full = wait_until(Duration::from_secs(10), || {
        ping(&d).is_some_and(|r| r["error"]["code"] == json!("overloaded"))
    });
    assert!(full, "a third client was not refused");

    let errors = c.call(&json!({"op": "stats"}))["errors"].clone();
    for code in ["bad_json", "unknown_op", "bad_request", "too_large"] {
        assert_eq!(errors[code], json!(1), "{code} in {errors}");
    }
    assert!(errors["overloaded"].as_u64() >= Some(1), "{errors}");
    let text = metrics(port);
    for code in [
        "bad_json",
        "unknown_op",
        "bad_request",
        "too_large",
        "overloaded",
    ] {
        let sample = format!("precog_errors_total{{code=\"{code}\"}}");
        assert!(text.contains(&sample), "no {sample} in:\n{text}");
    }
}
