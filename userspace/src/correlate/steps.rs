//! The one step queue: things stamped on the monotonic clock (device calls, timed Python
//! calls) waiting for the engine step that claims them, bounded by count and by age, and the
//! recent steps that late arrivals look back on.

use std::collections::VecDeque;

/// Items in stamp order (pushes are close to ordered: a late one is claimed by the next step
/// that passes it). Bounded: past `max` items, or for items older than `max_age_ns` behind the
/// newest, the oldest leave (a process whose steps are not seen keeps only its recent past);
/// a step that finds items older than that behind it counts them as unclaimed.
#[derive(Clone, Debug)]
pub struct StepQueue<T> {
    items: VecDeque<(u64, T)>,
    max: usize,
    max_age_ns: u64,
    /// Items that left without a step (too many, too old).
    pub unclaimed: u64,
}

impl<T> StepQueue<T> {
    pub fn new(max: usize, max_age_ns: u64) -> Self {
        Self { items: VecDeque::new(), max: max.max(1), max_age_ns, unclaimed: 0 }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds an item stamped `ts`; the oldest leave first when the queue is full or they are
    /// older than the age bound behind it (not counted: no step may ever come for them).
    pub fn push(&mut self, ts: u64, item: T) {
        while self.items.len() >= self.max
            || self.items.front().is_some_and(|(t, _)| t.saturating_add(self.max_age_ns) < ts)
        {
            self.items.pop_front();
        }
        self.items.push_back((ts, item));
    }

    /// The items stamped at or before `until` (a step at `until` claims them), oldest first;
    /// then the unclaimed ones older than the age bound behind `until` are dropped and counted.
    pub fn take_until(&mut self, until: u64) -> Vec<T> {
        let mut v = Vec::new();
        while self.items.front().is_some_and(|(t, _)| *t <= until) {
            if let Some((_, i)) = self.items.pop_front() {
                v.push(i);
            }
        }
        self.drop_older(until);
        v
    }

    /// The items stamped at or before `until` whatever their order in the queue (for items
    /// pushed out of order: timed calls arrive by thread, not by time).
    pub fn take_stamped_until(&mut self, until: u64) -> Vec<T> {
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = self.items.drain(..).partition(|(t, _)| *t <= until);
        self.items = rest;
        mine.into_iter().map(|(_, i)| i).collect()
    }

    /// Items older than `max_age` before `now` (all with `None`), handed back without a step.
    pub fn expire(&mut self, now: Option<u64>, max_age_ns: u64) -> Vec<T> {
        let (old, keep): (VecDeque<_>, VecDeque<_>) =
            self.items.drain(..).partition(|(t, _)| now.is_none_or(|n| n.saturating_sub(*t) > max_age_ns));
        self.items = keep;
        old.into_iter().map(|(_, i)| i).collect()
    }

    fn drop_older(&mut self, now: u64) {
        while self.items.front().is_some_and(|(t, _)| t.saturating_add(self.max_age_ns) < now) {
            self.items.pop_front();
            self.unclaimed = self.unclaimed.saturating_add(1);
        }
    }
}

/// One engine step as late arrivals need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepMark {
    pub ts_ns: u64,
    /// The engine's data-parallel index, when it says.
    pub engine: Option<u32>,
    pub batch_size: usize,
}

/// The last steps of one API server, newest last, at most `max`.
#[derive(Clone, Debug)]
pub struct RecentSteps {
    steps: VecDeque<StepMark>,
    max: usize,
}

impl RecentSteps {
    pub fn new(max: usize) -> Self {
        Self { steps: VecDeque::new(), max: max.max(1) }
    }

    pub fn push(&mut self, s: StepMark) {
        if self.steps.len() >= self.max {
            self.steps.pop_front();
        }
        self.steps.push_back(s);
    }

    /// The first step stamped at or after `start` of engine `dp` (any engine when None).
    pub fn first_at_or_after(&self, start: u64, dp: Option<u32>) -> Option<StepMark> {
        self.steps
            .iter()
            .filter(|s| s.ts_ns >= start && (dp.is_none() || dp == s.engine))
            .min_by_key(|s| s.ts_ns)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_claims_what_came_before_it_once() {
        let mut q = StepQueue::new(10, 1_000);
        for t in [10, 20, 30] {
            q.push(t, t);
        }
        assert_eq!(q.take_until(20), vec![10, 20]);
        assert_eq!(q.take_until(20), Vec::<u64>::new());
        assert_eq!(q.take_until(40), vec![30]);
        assert!(q.is_empty());
        assert_eq!(q.unclaimed, 0);
    }

    #[test]
    fn the_queue_is_bounded_by_count_and_age() {
        let mut q = StepQueue::new(3, 100);
        for t in 1..=5 {
            q.push(t, t);
        }
        assert_eq!(q.len(), 3);
        // 5 + 100 < 300: everything that is left is too old to stay beside 300.
        q.push(300, 300);
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_until(300), vec![300]);
        q.push(400, 400);
        assert_eq!(q.take_until(1_000), vec![400], "a step claims whatever came before it");
    }

    #[test]
    fn out_of_order_items_and_expiry() {
        let mut q = StepQueue::new(10, u64::MAX);
        q.push(50, "b");
        q.push(10, "a");
        q.push(90, "c");
        assert_eq!(q.take_stamped_until(60), vec!["b", "a"]);
        assert_eq!(q.expire(Some(95), 10), Vec::<&str>::new());
        assert_eq!(q.expire(Some(200), 10), vec!["c"]);
        q.push(1, "d");
        assert_eq!(q.expire(None, 0), vec!["d"]);
    }

    #[test]
    fn recent_steps_find_the_first_step_after_a_start() {
        let mut r = RecentSteps::new(2);
        let m = |ts, engine, batch_size| StepMark { ts_ns: ts, engine, batch_size };
        r.push(m(100, Some(0), 1));
        r.push(m(200, Some(1), 2));
        assert_eq!(r.first_at_or_after(50, None), Some(m(100, Some(0), 1)));
        assert_eq!(r.first_at_or_after(50, Some(1)), Some(m(200, Some(1), 2)));
        assert_eq!(r.first_at_or_after(250, None), None);
        r.push(m(300, Some(0), 3));
        assert_eq!(r.first_at_or_after(0, Some(0)), Some(m(300, Some(0), 3)), "bounded: the oldest left");
    }
}
