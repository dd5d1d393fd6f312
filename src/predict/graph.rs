//! The process dependency graph from each process's `after` edges.
//!
//! A process is ranked together with its prerequisites: a prerequisite that has not run yet is
//! at least as likely as anything that needs it, and sorts ahead of it on a tie, so the hot path
//! never lists a process before a prerequisite that still has to run. The configuration already
//! refuses cycles; a cycle here (from a configuration built by hand) is broken, not followed.

use crate::config::ProcessConfig;

#[derive(Debug, Clone, Default)]
pub struct DepGraph {
    /// Every prerequisite of each process, transitively, by index.
    prerequisites: Vec<Vec<usize>>,
    /// Longest chain of prerequisites below each process.
    depth: Vec<usize>,
}

impl DepGraph {
    pub fn new(processes: &[ProcessConfig]) -> DepGraph {
        let index = |name: &str| processes.iter().position(|p| p.name == name);
        let direct: Vec<Vec<usize>> = processes
            .iter()
            .map(|p| p.after.iter().filter_map(|a| index(a)).collect())
            .collect();

        let n = processes.len();
        let mut prerequisites = vec![Vec::new(); n];
        let mut depth = vec![0; n];
        for (i, all) in prerequisites.iter_mut().enumerate() {
            // Walk the edges below i; `seen` stops a cycle from looping.
            let mut seen = vec![false; n];
            seen[i] = true;
            let mut stack: Vec<(usize, usize)> = direct[i].iter().map(|&j| (j, 1)).collect();
            while let Some((j, d)) = stack.pop() {
                depth[i] = depth[i].max(d);
                if seen[j] {
                    continue;
                }
                seen[j] = true;
                all.push(j);
                stack.extend(direct[j].iter().map(|&k| (k, d + 1)));
            }
        }
        DepGraph {
            prerequisites,
            depth,
        }
    }

    pub fn prerequisites(&self, process: usize) -> &[usize] {
        self.prerequisites.get(process).map_or(&[], Vec::as_slice)
    }

    pub fn depth(&self, process: usize) -> usize {
        self.depth.get(process).copied().unwrap_or(0)
    }

    /// Lifts every prerequisite not yet `done` to the chance of what needs it, then orders the
    /// processes by chance, prerequisites first on a tie. Returns indices.
    pub fn rank(&self, p: &mut [f64], done: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let n = p.len().min(self.prerequisites.len());
        for i in 0..n {
            for &j in &self.prerequisites[i] {
                if !done(j) && p[j] < p[i] {
                    p[j] = p[i];
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            p[b].total_cmp(&p[a])
                .then(self.depth[a].cmp(&self.depth[b]))
                .then(a.cmp(&b))
        });
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(name: &str, after: &[&str]) -> ProcessConfig {
        ProcessConfig {
            name: name.into(),
            after: after.iter().map(|a| a.to_string()).collect(),
            ..ProcessConfig::default()
        }
    }

    #[test]
    fn prerequisites_are_lifted_and_ranked_first() {
        let g = DepGraph::new(&[
            process("validate", &[]),
            process("ship", &["validate"]),
            process("pay", &["ship"]),
        ]);
        assert_eq!(g.prerequisites(2), &[1, 0]);
        let mut p = vec![0.1, 0.2, 0.9];
        let order = g.rank(&mut p, &|_| false);
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(p, vec![0.9, 0.9, 0.9]);

        let mut p = vec![0.1, 0.2, 0.9];
        let order = g.rank(&mut p, &|j| j == 0);
        assert_eq!(order, vec![1, 2, 0]);
    }

    #[test]
    fn a_cycle_is_not_followed_forever() {
        let g = DepGraph::new(&[process("a", &["b"]), process("b", &["a"])]);
        assert_eq!(g.prerequisites(0), &[1]);
        assert_eq!(g.prerequisites(1), &[0]);
    }
}
