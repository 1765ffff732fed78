//! Which traced process serves which: the one definition of the process topology that every
//! join uses. An engine step is decoded on its API server's IPC; the engine core and workers
//! that did the step's work are that server's descendants, and the data-parallel index of an
//! engine core is in its process title (vLLM's `VLLM::EngineCore_DP1`).

use std::collections::HashMap;

#[derive(Clone, Debug, Default)]
struct Node {
    /// Ancestors, nearest first (read when it began to be traced).
    ancestors: Vec<u32>,
    /// Its data-parallel index, read from its title the first time it is asked for (an engine
    /// core sets its title after it starts).
    dp: Option<Option<u32>>,
}

/// The traced processes and their ancestry.
#[derive(Debug, Default)]
pub struct Topology {
    nodes: HashMap<u32, Node>,
}

impl Topology {
    pub fn add(&mut self, pid: u32, ancestors: Vec<u32>) {
        self.nodes.entry(pid).or_insert(Node { ancestors, dp: None });
    }

    pub fn remove(&mut self, pid: u32) {
        self.nodes.remove(&pid);
    }

    /// Whether `pid` is `root` or one of its descendants.
    pub fn is_under(&self, pid: u32, root: u32) -> bool {
        pid == root || self.nodes.get(&pid).is_some_and(|n| n.ancestors.contains(&root))
    }

    /// The API server of an engine-core process: its nearest traced ancestor, with the
    /// data-parallel index of its title (`title` reads it: `process::procfs::dp_index`).
    pub fn api_server_of(&mut self, pid: u32, title: impl FnOnce(u32) -> Option<u32>) -> Option<(u32, Option<u32>)> {
        let node = self.nodes.get(&pid)?;
        let api = node.ancestors.iter().copied().find(|a| self.nodes.contains_key(a))?;
        let node = self.nodes.get_mut(&pid)?;
        let dp = *node.dp.get_or_insert_with(|| title(pid));
        Some((api, dp))
    }

    /// Whether `pid` is an engine core of `api` whose work a step of `api`'s engine `engine`
    /// is: a core with no data-parallel index serves every step, one with an index only its
    /// engine's. (Its index must have been read by [`Self::api_server_of`].)
    pub fn serves(&self, pid: u32, api: u32, engine: Option<u32>) -> bool {
        let Some(node) = self.nodes.get(&pid) else { return false };
        let nearest = node.ancestors.iter().copied().find(|a| self.nodes.contains_key(a));
        let dp = node.dp.flatten();
        nearest == Some(api) && (dp.is_none() || dp == engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_cores_belong_to_their_nearest_traced_ancestor() {
        let mut t = Topology::default();
        // 1 (init) -> 10 (API server) -> 11 (EngineCore_DP1) -> 12 (worker); 20 elsewhere.
        t.add(10, vec![1]);
        t.add(11, vec![10, 1]);
        t.add(12, vec![11, 10, 1]);
        t.add(20, vec![1]);
        assert_eq!(t.api_server_of(11, |_| Some(1)), Some((10, Some(1))));
        assert_eq!(t.api_server_of(11, |_| panic!("read once")), Some((10, Some(1))));
        assert_eq!(t.api_server_of(12, |_| None), Some((11, None)));
        assert_eq!(t.api_server_of(10, |_| None), None, "1 is not traced");
        assert!(t.is_under(12, 10) && t.is_under(10, 10) && !t.is_under(20, 10));
        assert!(t.serves(11, 10, Some(1)) && !t.serves(11, 10, None) && !t.serves(11, 10, Some(0)));
        assert!(t.serves(12, 11, None) && t.serves(12, 11, Some(3)), "no index: every step");
        assert!(!t.serves(12, 10, None), "a worker's nearest traced ancestor is its engine core");
        t.remove(10);
        assert_eq!(t.api_server_of(11, |_| None), None);
    }
}
