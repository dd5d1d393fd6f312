//! The step model's final stage: how far the mixers, rather than the plain first-order chain,
//! are believed to be the better forecaster of the next step. The belief is a posterior over the
//! two, updated by Bayes' rule after every step, so it follows the difference in cumulative log
//! loss: a young mixer, or one that never converges on a thin data set, loses to the chain and
//! the chain's ranking shows through.

/// Share of the final stage's belief passed back to the other side after every step (Fixed-
/// Share): the belief can never lock in for good, so if the mixer and the chain trade places
/// later (a shop changes, the model grows) it follows within a few dozen steps.
const SHARE: f32 = 1e-4;

/// The final stage's belief before any step was seen: even odds.
pub(super) fn even_odds() -> f32 {
    0.5
}

/// The belief in the mixers after a step the mixers gave chance `mixers` and the chain `chain`:
/// Bayes' rule over the two forecasters, so the belief follows the cumulative log-loss
/// difference, then Fixed-Share. (Measured against the gradient-learned trust it replaces: on
/// OTTO's 718 steps that trust had barely moved from its start and left precog below the chain.)
pub(super) fn updated_belief(belief: f32, mixers: f32, chain: f32) -> f32 {
    let for_mixers = belief * mixers;
    let posterior = for_mixers / (for_mixers + (1.0 - belief) * chain);
    if !posterior.is_finite() {
        return belief;
    }
    (1.0 - SHARE) * posterior + SHARE * 0.5
}

#[cfg(test)]
mod tests {
    use super::{SHARE, updated_belief};

    #[test]
    fn the_belief_moves_to_the_forecaster_that_gave_the_truth_more_chance() {
        let mut belief = 0.5;
        for _ in 0..20 {
            belief = updated_belief(belief, 0.6, 0.3);
        }
        assert!(belief > 0.99, "{belief}");
        for _ in 0..40 {
            belief = updated_belief(belief, 0.3, 0.6);
        }
        assert!(belief < 0.01, "{belief}");
    }

    #[test]
    fn the_belief_never_locks_in() {
        let mut belief = 0.5;
        for _ in 0..10_000 {
            belief = updated_belief(belief, 1e-6, 1.0);
        }
        assert!(belief >= SHARE * 0.5 * 0.99, "{belief}");
        // Recovering from the floor takes a few dozen steps, not thousands.
        let mut steps = 0;
        while belief < 0.5 {
            belief = updated_belief(belief, 0.6, 0.3);
            steps += 1;
        }
        assert!(steps < 30, "{steps}");
    }

    #[test]
    fn equal_forecasters_leave_the_belief_alone() {
        assert!((updated_belief(0.7, 0.4, 0.4) - 0.7).abs() < 1e-3);
    }
}
