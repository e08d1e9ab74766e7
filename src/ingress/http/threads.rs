//! The threads that serve the HTTP ingress's connections: each runs a single-thread tokio
//! runtime of its own, and the accept loops hand them connections in turn, as nginx hands
//! them to its workers. A request's in-process calls are handed to their handlers' tasks on
//! the thread of the connection (`connector::serve`), so the whole request stays there; the
//! rest of the process (NATS, the services' subscriptions, SMTP, timers of the connector)
//! stays on its own runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Connection threads (see [`super::config::THREADS`]); with none, connections are spawned
/// on the caller's runtime.
pub struct ConnectionThreads {
    runtimes: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl ConnectionThreads {
    /// Start `n` threads, each with its runtime.
    pub fn start(n: usize) -> std::io::Result<ConnectionThreads> {
        let stop = CancellationToken::new();
        let mut runtimes = Vec::with_capacity(n);
        for i in 0..n {
            // Each thread builds its runtime and says so: started, named, ready for work.
            let (ready, started) = std::sync::mpsc::channel();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("http-ingress-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = ready.send(Ok(runtime.handle().clone()));
                            runtime.block_on(stop.cancelled());
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })?;
            let runtime = started.recv().map_err(std::io::Error::other)??;
            runtimes.push(runtime);
        }
        Ok(ConnectionThreads {
            runtimes,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// Serve an accepted connection on the next thread in turn, or on this runtime when
    /// there are none. The stream moves to the thread's own reactor, so that its readiness
    /// wakes that thread and not this runtime's.
    pub fn serve<S, F>(&self, stream: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        if self.runtimes.is_empty() {
            tokio::spawn(serve(stream));
            return;
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to its thread");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        self.runtimes[i].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "cannot take over an accepted connection"),
            }
        });
    }

    /// End the threads; what still runs on them is dropped (after the connections were let
    /// finish, at `HttpIngress::shutdown`).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
