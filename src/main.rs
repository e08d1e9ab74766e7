//! The `busgate` binary: the allocator and the runtime around [`busgate::cli::run`].

/// A gateway allocates many small, short-lived buffers across threads; mimalloc handles that
/// pattern with far less contention than glibc's allocator (see [`busgate::allocator`]).
#[global_allocator]
static ALLOCATOR: busgate::allocator::Allocator = busgate::allocator::Allocator;

fn main() -> std::process::ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // A task woken or spawned by another runs next on the same worker (tokio's LIFO slot),
    // where the other worker cannot steal it: a call's HTTP connection, subscription and
    // handler tasks then pile onto one worker. Without it, 8-20% more requests a second at 64
    // connections for less CPU each (BENCHMARKS.md, twelfth session).
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    match runtime.build() {
        Ok(runtime) => runtime.block_on(busgate::cli::run()),
        Err(e) => {
            eprintln!("busgate: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
