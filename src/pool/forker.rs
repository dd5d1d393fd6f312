//! The thread that forks every worker, with a queue per pool served in turn.
//!
//! Starting a worker blocks until the child has called exec, and a child that joins a cgroup
//! can be held there for tens of milliseconds (the kernel waits out an RCU grace period to move
//! a task); on the daemon's one runtime thread that would hold up every request. Nor can a
//! start run on a pool thread: a worker's parent-death signal fires when the *thread* that
//! forked it exits, and pool threads exit after idling. So one thread, kept for the daemon's
//! lifetime, does every fork.
//!
//! Pools take turns, one start each, so a burst of hundreds of starts in one pool does not hold
//! back another pool's first worker; within a pool, starts keep their order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, OnceLock};

/// One start, run on the forking thread.
pub type ForkJob = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queues {
    by_pool: BTreeMap<String, VecDeque<ForkJob>>,
    /// The pool served last; the next turn goes to the pool after it.
    last: Option<String>,
}

impl Queues {
    /// The next job, taking pools in turn.
    fn next(&mut self) -> Option<ForkJob> {
        let after = self.last.as_ref().and_then(|last| {
            self.by_pool
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
                .map(|(name, _)| name.clone())
        });
        let pool = after.or_else(|| self.by_pool.keys().next().cloned())?;
        let queue = self.by_pool.get_mut(&pool)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.by_pool.remove(&pool);
        }
        self.last = Some(pool);
        job
    }
}

struct Forker {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// Queues `job` on the forking thread, in `pool`'s turn; `false` when that thread could not be
/// started.
pub fn submit(pool: &str, job: ForkJob) -> bool {
    static FORKER: OnceLock<Option<&'static Forker>> = OnceLock::new();
    let forker = FORKER.get_or_init(|| {
        let forker: &'static Forker = Box::leak(Box::new(Forker {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
        }));
        let started = std::thread::Builder::new()
            .name("precog-fork".into())
            .spawn(move || serve(forker));
        match started {
            Ok(_) => Some(forker),
            Err(e) => {
                tracing::error!("cannot start the thread that starts workers: {e}");
                None
            }
        }
    });
    let Some(forker) = forker else {
        return false;
    };
    let mut q = forker.queues.lock().expect("fork queues");
    q.by_pool
        .entry(pool.to_string())
        .or_default()
        .push_back(job);
    drop(q);
    forker.ready.notify_one();
    true
}

fn serve(forker: &Forker) {
    loop {
        let job = {
            let mut q = forker.queues.lock().expect("fork queues");
            loop {
                if let Some(job) = q.next() {
                    break job;
                }
                q = forker.ready.wait(q).expect("fork queues");
            }
        };
        // A panic in one start must not end the thread: that would end every worker it forked.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("starting a worker panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pools_take_turns_and_each_keeps_its_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut q = Queues::default();
        let push = |q: &mut Queues, pool: &str, n: u32| {
            let order = order.clone();
            let tag = format!("{pool}{n}");
            q.by_pool
                .entry(pool.to_string())
                .or_default()
                .push_back(Box::new(move || order.lock().unwrap().push(tag)));
        };
        for n in 1..=4 {
            push(&mut q, "big", n);
        }
        push(&mut q, "small", 1);
        push(&mut q, "other", 1);
        while let Some(job) = q.next() {
            job();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["big1", "other1", "small1", "big2", "big3", "big4"]
        );
        assert!(q.by_pool.is_empty());
    }
}
