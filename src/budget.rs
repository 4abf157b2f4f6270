//! [`BufferBudget`]: how many bytes of candidate bodies the whole process holds in memory at
//! once. Adapters own one and share it between requests; the engine only says what the
//! answer is when it runs out ([`Refusal::overloaded`](crate::Refusal::overloaded)).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The default budget: 64 MiB.
pub const DEFAULT_BUFFER_BUDGET: usize = 64 * 1024 * 1024;

/// A process-wide budget of buffered candidate bytes. Cheap to clone (clones share it).
///
/// A candidate is admitted with [`admit`](Self::admit), which reserves what it is about to
/// buffer; past the budget it is not admitted (answer it with
/// [`Refusal::overloaded`](crate::Refusal::overloaded): 503 with `Retry-After`). An admitted
/// candidate's [`Held`] grows with what it actually buffers: within the budget while its
/// request body arrives ([`Held::try_grow_to`]: a body whose length is not declared is
/// charged as its bytes come, so it cannot go past the budget unseen), and even past it for
/// its answer ([`Held::grow_to`]: nothing already sent upstream is dropped). Dropping the
/// `Held` gives its bytes back.
#[derive(Debug, Clone)]
pub struct BufferBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Default for BufferBudget {
    fn default() -> Self {
        BufferBudget::new(DEFAULT_BUFFER_BUDGET)
    }
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BufferBudget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by admitted candidates now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Admits a candidate that is about to buffer `reserve` bytes (0: it is charged as its
    /// bytes come): `None` when that would go over the budget, or the budget is spent.
    pub fn admit(&self, reserve: usize) -> Option<Held> {
        let before = self.used.fetch_add(reserve, Ordering::AcqRel);
        if before.saturating_add(reserve) > self.limit || before >= self.limit {
            self.used.fetch_sub(reserve, Ordering::AcqRel);
            return None;
        }
        Some(Held {
            used: self.used.clone(),
            held: reserve,
            limit: self.limit,
        })
    }
}

/// What one admitted candidate holds of a [`BufferBudget`]; given back on drop.
#[derive(Debug)]
pub struct Held {
    used: Arc<AtomicUsize>,
    held: usize,
    limit: usize,
}

impl Held {
    /// The candidate now buffers `total` bytes (counted only beyond what it reserved).
    pub fn grow_to(&mut self, total: usize) {
        if total > self.held {
            self.used.fetch_add(total - self.held, Ordering::AcqRel);
            self.held = total;
        }
    }
}

impl Held {
    /// The candidate is about to buffer `total` bytes: `false` (and nothing charged) when
    /// the bytes beyond what it holds would go over the budget.
    pub fn try_grow_to(&mut self, total: usize) -> bool {
        if total <= self.held {
            return true;
        }
        let more = total - self.held;
        let before = self.used.fetch_add(more, Ordering::AcqRel);
        if before.saturating_add(more) > self.limit {
            self.used.fetch_sub(more, Ordering::AcqRel);
            return false;
        }
        self.held = total;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::BufferBudget;

    #[test]
    fn admits_within_the_budget_and_gives_back_on_drop() {
        let b = BufferBudget::new(100);
        let mut first = b.admit(60).unwrap();
        assert!(b.admit(60).is_none(), "over the budget");
        assert_eq!(b.used(), 60);
        first.grow_to(150); // an admitted candidate is never cut off
        assert_eq!(b.used(), 150);
        assert!(b.admit(1).is_none());
        drop(first);
        assert_eq!(b.used(), 0);
        assert!(b.admit(100).is_some());
    }

    #[test]
    fn bodies_charged_as_they_come_stay_within_the_budget() {
        let b = BufferBudget::new(100);
        let mut slow = b.admit(0).unwrap();
        let mut other = b.admit(0).unwrap();
        assert!(slow.try_grow_to(10));
        assert!(other.try_grow_to(80));
        assert!(!slow.try_grow_to(30), "over the budget");
        assert_eq!(b.used(), 90);
        assert!(slow.try_grow_to(20));
        assert!(b.admit(0).is_none(), "spent");
        drop(other);
        assert_eq!(b.used(), 20);
        assert!(b.admit(0).is_some());
    }
}
