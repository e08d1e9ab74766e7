//! Handles of metric series resolved once per label set, and observed through a buffer per
//! thread where every request observes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fnv::FnvBuildHasher;
use prometheus::core::Collector;
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter};
use thread_local::ThreadLocal;

/// Children of a metric vector resolved once per label set, keyed by a few machine words:
/// `with_label_values` hashes every byte of every label, several times per request.
pub struct HandleCache<K, V> {
    handles: std::sync::RwLock<HashMap<K, V, FnvBuildHasher>>,
}

/// Label sets a [`HandleCache`] remembers; later ones are resolved each time (still correct,
/// only slower), so a flood of distinct outcomes cannot grow memory.
pub const MAX_CACHED_HANDLES: usize = 4096;

impl<K, V> Default for HandleCache<K, V> {
    fn default() -> Self {
        HandleCache {
            handles: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> HandleCache<K, V> {
    /// The handle for `key`, made by `resolve` the first time.
    pub fn get(&self, key: K, resolve: impl FnOnce() -> V) -> V {
        if let Some(v) = self.handles.read().expect("handles lock").get(&key) {
            return v.clone();
        }
        let v = resolve();
        let mut handles = self.handles.write().expect("handles lock");
        if handles.len() < MAX_CACHED_HANDLES {
            handles.insert(key, v.clone());
        }
        v
    }
}

/// A metric handle whose observations a thread can gather in a buffer of its own.
pub trait Buffered: Clone {
    type Local: Send;
    fn local(&self) -> Self::Local;
    /// Add what `local` gathered into the shared series, and clear it.
    fn flush(local: &Self::Local);
}

impl Buffered for Histogram {
    type Local = LocalHistogram;
    fn local(&self) -> LocalHistogram {
        Histogram::local(self)
    }
    fn flush(local: &LocalHistogram) {
        local.flush();
    }
}

impl Buffered for IntCounter {
    type Local = LocalIntCounter;
    fn local(&self) -> LocalIntCounter {
        IntCounter::local(self)
    }
    fn flush(local: &LocalIntCounter) {
        local.flush();
    }
}

impl<A: Buffered, B: Buffered> Buffered for (A, B) {
    type Local = (A::Local, B::Local);
    fn local(&self) -> Self::Local {
        (self.0.local(), self.1.local())
    }
    fn flush(local: &Self::Local) {
        A::flush(&local.0);
        B::flush(&local.1);
    }
}

/// A [`HandleCache`] whose observations each thread gathers in a buffer of its own, added into
/// the shared series when they are collected (register them [`Flushed`] by it). A shared
/// series is a handful of atomics that every worker writes for every request: with two
/// workers their cache lines moved between the cores, and telemetry cost 6-8% more CPU than
/// off, where it costs a few tenths of a percent in instructions (BENCHMARKS.md, thirteenth
/// session). A thread's buffer is behind a lock that only a collection ever contends.
pub struct BufferedCache<K: Send, V: Buffered> {
    handles: HandleCache<K, V>,
    buffers: ThreadLocal<Mutex<HashMap<K, V::Local, FnvBuildHasher>>>,
}

impl<K: Send, V: Buffered> Default for BufferedCache<K, V> {
    fn default() -> Self {
        BufferedCache {
            handles: HandleCache::default(),
            buffers: ThreadLocal::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy + Send, V: Buffered> BufferedCache<K, V> {
    /// Observe through this thread's buffer of the series `key`, resolved by `resolve` the
    /// first time any thread sees it.
    pub fn observe(&self, key: K, resolve: impl FnOnce() -> V, observe: impl FnOnce(&V::Local)) {
        let mut buffer = self
            .buffers
            .get_or_default()
            .lock()
            .expect("metrics buffer lock");
        if let Some(local) = buffer.get(&key) {
            observe(local);
            return;
        }
        let local = self.handles.get(key, resolve).local();
        observe(&local);
        // Beyond the bound, straight into the shared series (as the handle cache does).
        if buffer.len() < MAX_CACHED_HANDLES {
            buffer.insert(key, local);
        } else {
            V::flush(&local);
        }
    }

    /// Add every thread's buffered observations into the shared series.
    pub fn flush(&self) {
        for buffer in self.buffers.iter() {
            for local in buffer.lock().expect("metrics buffer lock").values() {
                V::flush(local);
            }
        }
    }
}

/// What a [`Flushed`] metric adds in before it is collected.
pub trait Flush: Send + Sync {
    fn flush(&self);
}

impl<K, V> Flush for BufferedCache<K, V>
where
    K: std::hash::Hash + Eq + Copy + Send + Sync,
    V: Buffered + Send + Sync,
{
    fn flush(&self) {
        BufferedCache::flush(self);
    }
}

/// A metric whose collection first adds in what threads buffered for it ([`BufferedCache`]).
#[derive(Clone)]
pub struct Flushed<C> {
    metric: C,
    buffers: Arc<dyn Flush>,
}

impl<C> Flushed<C> {
    pub fn new(metric: C, buffers: Arc<dyn Flush>) -> Flushed<C> {
        Flushed { metric, buffers }
    }
}

impl<C: Collector> Collector for Flushed<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.metric.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.buffers.flush();
        self.metric.collect()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{HistogramOpts, HistogramVec, Registry};

    use super::*;

    /// Samples of the histogram `family` in a collection of `registry`.
    fn samples(registry: &Registry, family: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_histogram().get_sample_count())
            .sum()
    }

    #[test]
    fn what_threads_buffer_reaches_every_collection_once() {
        let registry = Registry::new();
        let vec = HistogramVec::new(HistogramOpts::new("t_seconds", "t"), &["k"]).unwrap();
        let cache: Arc<BufferedCache<usize, Histogram>> = Arc::default();
        registry
            .register(Box::new(Flushed::new(vec.clone(), cache.clone())))
            .unwrap();
        let observe = |i: usize| {
            cache.observe(
                i % 3,
                || vec.with_label_values(&[&(i % 3).to_string()]),
                |h| h.observe(0.5),
            )
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..100).for_each(observe));
            }
        });
        // Buffered, not yet in the shared series; the threads have ended.
        let shared: u64 = (0..3)
            .map(|k| vec.with_label_values(&[&k.to_string()]).get_sample_count())
            .sum();
        assert_eq!(shared, 0);
        assert_eq!(samples(&registry, "t_seconds"), 400);
        assert_eq!(samples(&registry, "t_seconds"), 400, "counted once");
        observe(1);
        assert_eq!(samples(&registry, "t_seconds"), 401);
    }

    #[test]
    fn beyond_its_bound_a_buffer_observes_the_shared_series() {
        let vec = HistogramVec::new(HistogramOpts::new("t_seconds", "t"), &["k"]).unwrap();
        let cache: BufferedCache<usize, Histogram> = BufferedCache::default();
        for k in 0..=MAX_CACHED_HANDLES {
            cache.observe(
                k,
                || vec.with_label_values(&[&k.to_string()]),
                |h| h.observe(0.5),
            );
        }
        let last = vec.with_label_values(&[&MAX_CACHED_HANDLES.to_string()]);
        assert_eq!(last.get_sample_count(), 1, "not kept, so not buffered");
        assert_eq!(vec.with_label_values(&["0"]).get_sample_count(), 0);
        cache.flush();
        assert_eq!(vec.with_label_values(&["0"]).get_sample_count(), 1);
    }

    #[test]
    fn handle_cache_resolves_once_per_key_and_stays_bounded() {
        let cache: HandleCache<usize, usize> = HandleCache::default();
        let resolved = std::cell::Cell::new(0);
        let resolve = |v: usize| {
            resolved.set(resolved.get() + 1);
            v * 2
        };
        assert_eq!(cache.get(7, || resolve(7)), 14);
        assert_eq!(cache.get(7, || resolve(7)), 14);
        assert_eq!(resolved.get(), 1);
        for k in 0..MAX_CACHED_HANDLES + 10 {
            assert_eq!(cache.get(k, || resolve(k)), k * 2);
        }
        assert_eq!(cache.handles.read().unwrap().len(), MAX_CACHED_HANDLES);
        // Past the bound a key is resolved each time, and still right.
        let before = resolved.get();
        let past = MAX_CACHED_HANDLES + 5;
        assert_eq!(cache.get(past, || resolve(past)), past * 2);
        assert_eq!(cache.get(past, || resolve(past)), past * 2);
        assert_eq!(resolved.get(), before + 2);
    }
}
