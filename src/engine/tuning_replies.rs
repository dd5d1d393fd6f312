//! Answers to operators' changes of a pool's limits, sent once its cgroup took them or the
//! kernel refused them.

use super::{PoolLimits, WRITE_RETRY};
use crate::engine::Engine;
use crate::engine::tuning::ControlReply;

impl Engine {
    /// Answers an operator's change of `pool`'s limits with the pool's view once no write to its
    /// cgroup is on its way (the change's own write, started by the change), at once when none is.
    pub(in crate::engine) fn reply_once_written(&mut self, pool: &str, reply: ControlReply) {
        match self.tuning.pools.get(pool) {
            Some(t) if t.writing => {
                let waiting = self.tuning.awaiting_write.entry(pool.to_string());
                waiting.or_default().push(reply);
            }
            _ => {
                let _ = reply.send(Ok(self.pools_view()[pool].clone()));
            }
        }
    }

    /// Answers the operators waiting for `pool`'s limits: with the kernel's refusal, or with the
    /// pool's view once no other write follows.
    pub(super) fn answer_awaiting(&mut self, pool: &str, refused: Option<(&str, &PoolLimits)>) {
        if refused.is_none() && self.tuning.pools.get(pool).is_some_and(|t| t.writing) {
            return;
        }
        let Some(waiting) = self.tuning.awaiting_write.remove(pool) else {
            return;
        };
        let answer = match refused {
            Some((error, held)) => Err(format!(
                "the configuration of pool `{pool}` changed, but its cgroup refused the new \
                 limits: {error}; it holds {held}, and precogd tries again every {} s",
                WRITE_RETRY.as_secs()
            )),
            None => Ok(self.pools_view()[pool].clone()),
        };
        for reply in waiting {
            let _ = reply.send(answer.clone());
        }
    }
}
