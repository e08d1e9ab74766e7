//! The `busgate` binary: the allocator and the runtime around [`busgate::cli::run`].

/// A gateway allocates many small, short-lived buffers across threads; mimalloc handles that
/// pattern with far less contention than glibc's allocator (see [`busgate::allocator`]).
#[global_allocator]
static ALLOCATOR: busgate::allocator::Allocator = busgate::allocator::Allocator;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    busgate::cli::run().await
}
