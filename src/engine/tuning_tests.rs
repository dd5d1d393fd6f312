use super::*;

#[test]
fn operators_waiting_on_a_pool_a_reload_removes_get_an_answer() {
    let mut tuning = Tuning::default();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    tuning.awaiting_write.insert("shop".into(), vec![tx]);
    tuning.forget_pool("shop");
    let answer = rx.try_recv().expect("an answer, not a wait without end");
    let error = answer.expect_err("the limits never reached a cgroup");
    assert!(
        error.contains("pool `shop`") && error.contains("removed"),
        "{error}"
    );
    assert!(tuning.awaiting_write.is_empty());
}
