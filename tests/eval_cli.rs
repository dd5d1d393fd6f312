//! Black-box: `precogctl eval` on files that hold no sessions says so and fails, rather than
//! printing a report of a model that predicted nothing.

use std::process::Command;

#[test]
fn a_file_without_sessions_is_an_error_not_an_empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("empty.jsonl", "events", ""),
        ("blank.txt", "jd", "\n\n"),
        (
            "header.csv",
            "rees46",
            "event_time,event_type,product_id,category_id,\
category_code,brand,price,user_id,user_session\n",
        ),
    ];
    for (name, format, text) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_precogctl"))
            .args(["eval", "--format", format])
            .arg(&path)
            .env_remove("PRECOG_SOCKET")
            .env_remove("PRECOG_BUS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {out:?}");
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(stderr.contains("holds no sessions"), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: a report was printed");
    }
}
