//! HTTP request <-> engine requests: finished engine requests wait here, under the ids the API
//! server answered with, for the HTTP record that carries one of them.

use std::collections::{HashMap, VecDeque};

use crate::engine::EngineRequest;

/// Finished engine requests kept for joining with their HTTP request: for this long, and at
/// most this many keys.
pub const JOIN_WINDOW_NS: u64 = 120 * 1_000_000_000;
pub const MAX_JOINABLE: usize = 100_000;

#[derive(Debug, Default)]
pub struct RequestJoin {
    /// (API server pid, join key) -> its finished engine requests (several with n > 1).
    joinable: HashMap<(u32, String), Vec<EngineRequest>>,
    order: VecDeque<(u64, u32, String)>,
}

impl RequestJoin {
    /// A finished engine request, at `now` (monotonic ns).
    pub fn add(&mut self, now: u64, r: &EngineRequest) {
        let key = r.join_key();
        // `/v1/completions` sends prompt i of a request as `<id>-<i>`: index it under `<id>` too.
        let batch = key
            .rsplit_once('-')
            .filter(|(head, i)| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && head.contains('-'))
            .map(|(head, _)| head.to_string());
        for k in std::iter::once(key).chain(batch) {
            self.order.push_back((now, r.pid, k.clone()));
            self.joinable.entry((r.pid, k)).or_default().push(r.clone());
        }
        while self.order.len() > MAX_JOINABLE {
            if let Some((_, p, k)) = self.order.pop_front() {
                self.joinable.remove(&(p, k));
            }
        }
    }

    /// A table of the requests finished among `events` (replays and tests).
    pub fn of(events: &[crate::engine::EngineEvent]) -> Self {
        let mut j = Self::default();
        for e in events {
            if let crate::engine::EngineEvent::Finished(r) = e {
                j.add(0, r);
            }
        }
        j
    }

    /// The finished engine requests behind an HTTP response id of `pid` (several with n > 1),
    /// taken out of the table.
    pub fn join(&mut self, pid: u32, response_id: &str) -> Vec<EngineRequest> {
        self.joinable.remove(&(pid, response_id.to_string())).unwrap_or_default()
    }

    /// Forgets candidates past the join window.
    pub fn expire(&mut self, now: u64) {
        while let Some((t, _, _)) = self.order.front() {
            if now.saturating_sub(*t) < JOIN_WINDOW_NS {
                break;
            }
            if let Some((_, p, k)) = self.order.pop_front() {
                self.joinable.remove(&(p, k));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.joinable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.joinable.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_of_one_request_join_under_its_id_and_candidates_expire() {
        let mut j = RequestJoin::default();
        let r = |id: &str| {
            let mut r = EngineRequest::default();
            (r.pid, r.request_id, r.external_id) = (7, id.into(), Some(id.into()));
            r
        };
        j.add(0, &r("cmpl-abc-0"));
        j.add(0, &r("cmpl-abc-1"));
        assert_eq!(j.join(7, "cmpl-abc").len(), 2);
        assert!(j.join(7, "cmpl-abc").is_empty(), "taken once");
        assert_eq!(j.join(7, "cmpl-abc-1").len(), 1);
        j.add(10, &r("chatcmpl-x"));
        j.expire(10 + JOIN_WINDOW_NS);
        assert!(j.join(7, "chatcmpl-x").is_empty());
    }
}
