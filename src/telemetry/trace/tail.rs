//! PROD's tail selection: ended spans wait in a bounded buffer until their trace proves worth
//! keeping (an error, a slow span, a `:888/trace` selection) or they are evicted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceId;
use opentelemetry::InstrumentationScope;

use std::sync::Mutex;

use super::export::Export;
use super::span::Waiting;

/// Traces PROD remembers as selected, and for how long after the last selection.
pub const SELECTED_TRACES_MAX: usize = 8192;
pub const SELECTION_TTL: Duration = Duration::from_secs(20);

/// Exports the spans of selected traces through `export`; holds the others.
#[derive(Debug)]
pub struct Selector {
    export: Export,
    /// The scope of every packed span (they do not repeat it).
    scope: InstrumentationScope,
    slow: Duration,
    state: Mutex<SelectorState>,
}

#[derive(Debug)]
struct SelectorState {
    ring: Ring,
    selected: HashMap<TraceId, Instant>,
}

impl SelectorState {
    fn is_selected(&self, trace_id: TraceId) -> bool {
        // Most spans belong to unselected traces: skip the hash when there is nothing to find.
        !self.selected.is_empty()
            && self
                .selected
                .get(&trace_id)
                .is_some_and(|at| at.elapsed() < SELECTION_TTL)
    }

    /// Remember `trace_id` as selected and take its buffered spans.
    fn select(&mut self, trace_id: TraceId) -> Vec<Waiting> {
        if self.selected.len() >= SELECTED_TRACES_MAX {
            self.selected.retain(|_, at| at.elapsed() < SELECTION_TTL);
            if self.selected.len() >= SELECTED_TRACES_MAX {
                // Forget the oldest selection rather than grow without bound.
                if let Some(oldest) = self
                    .selected
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(t, _)| *t)
                {
                    self.selected.remove(&oldest);
                }
            }
        }
        self.selected.insert(trace_id, Instant::now());
        self.ring.take_trace(trace_id)
    }
}

impl Selector {
    pub fn new(
        export: Export,
        scope: InstrumentationScope,
        slow: Duration,
        capacity: usize,
    ) -> Selector {
        Selector {
            export,
            scope,
            slow,
            state: Mutex::new(SelectorState {
                ring: Ring::new(capacity),
                selected: HashMap::new(),
            }),
        }
    }

    /// Where selected spans go.
    pub fn exporter(&self) -> &Export {
        &self.export
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SelectorState> {
        // Nothing in the state is left half-updated by a panic: keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Export `trace_id`'s buffered spans and its future ones.
    pub fn select(&self, trace_id: TraceId) {
        let flushed = self.lock().select(trace_id);
        self.export(flushed);
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        self.lock().is_selected(trace_id)
    }

    fn export(&self, spans: impl IntoIterator<Item = Waiting>) {
        for span in spans {
            self.export.on_end(span, &self.scope);
        }
    }

    /// An ended span: exported when its trace is selected, or when it failed or was slow
    /// (which selects its trace); held otherwise.
    pub fn on_end(&self, span: Waiting) {
        let trace_id = span.trace_id();
        let select = span.failed() || span.duration() >= self.slow;
        let mut st = self.lock();
        if st.is_selected(trace_id) {
            drop(st);
            self.export([span]);
        } else if select {
            let flushed = st.select(trace_id);
            drop(st);
            self.export(flushed.into_iter().chain([span]));
        } else {
            let evicted = st.ring.push(span);
            drop(st);
            // Freed outside the lock.
            drop(evicted);
        }
    }
}

/// A fixed ring of waiting spans, grown as it first fills; the oldest is replaced.
#[derive(Debug)]
struct Ring {
    slots: Vec<Option<Waiting>>,
    capacity: usize,
    next: usize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        let capacity = capacity.max(1);
        Ring {
            slots: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    /// Hold `span`; returns the span it replaces, to be freed by the caller.
    fn push(&mut self, span: Waiting) -> Option<Waiting> {
        let at = self.next;
        self.next = (self.next + 1) % self.capacity;
        if self.slots.len() < self.capacity {
            self.slots.push(Some(span));
            None
        } else {
            self.slots[at].replace(span)
        }
    }

    /// Every waiting span of `trace_id`, oldest first.
    fn take_trace(&mut self, trace_id: TraceId) -> Vec<Waiting> {
        let n = self.slots.len();
        // Oldest first: from the slot about to be replaced, around the ring.
        let start = if n < self.capacity { 0 } else { self.next };
        let mut taken = Vec::new();
        for i in (0..n).map(|i| (start + i) % n) {
            let slot = &mut self.slots[i];
            if slot.as_ref().is_some_and(|w| w.trace_id() == trace_id) {
                taken.extend(slot.take());
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::packed::tests::{packed, scope};

    #[test]
    fn the_ring_keeps_the_newest_spans_and_gives_a_trace_back_oldest_first() {
        let mut ring = Ring::new(4);
        for (i, trace) in [1u128, 2, 1, 3, 1, 2].into_iter().enumerate() {
            let evicted = ring.push(Waiting::Packed(packed(trace, i as u64 + 1, i as i64)));
            assert_eq!(evicted.is_some(), i >= 4);
        }
        // Capacity 4: spans 0 and 1 were replaced; trace 1 keeps spans 2 and 4.
        let ports = |spans: Vec<Waiting>| -> Vec<String> {
            spans
                .into_iter()
                .map(|s| s.into_data(&scope()).attributes[0].value.to_string())
                .collect()
        };
        assert_eq!(ports(ring.take_trace(TraceId::from(1u128))), ["2", "4"]);
        assert!(ring.take_trace(TraceId::from(1u128)).is_empty());
        assert_eq!(ports(ring.take_trace(TraceId::from(2u128))), ["5"]);
        assert_eq!(ports(ring.take_trace(TraceId::from(3u128))), ["3"]);
    }
}
