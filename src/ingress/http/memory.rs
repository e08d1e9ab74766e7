//! The request memory budget: bytes of request bodies held at once across all requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Reserve `n` bytes, or `None` when that would exceed the limit.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        self.take(n).then(|| Reservation {
            budget: self.clone(),
            held: n,
        })
    }
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Reservation {
    /// Hold `n` more bytes; false (and nothing held) when over the limit.
    pub fn grow(&mut self, n: usize) -> bool {
        if self.budget.take(n) {
            self.held += n;
            true
        } else {
            false
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_and_releases() {
        let b = MemoryBudget::new(100);
        let mut r = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none());
        assert!(r.grow(40));
        assert!(!r.grow(1));
        assert_eq!(b.used(), 100);
        drop(r);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(100).is_some());
    }
}
