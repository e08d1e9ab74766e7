//! The README's service example is real code: it is `examples/readme_service.rs`, which
//! `cargo test` compiles, and it runs.

use std::path::Path;
use std::process::Command;

const README_SECTION: &str = "## Writing a service";

/// The first ```rust block after the section's heading.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = &readme[readme.find(README_SECTION).expect("the section")..];
    let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let end = start + section[start..].find("```\n").expect("the block's end");
    section[start..end].to_owned()
}

#[test]
fn the_readme_shows_the_example_file() {
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/readme_service.rs"),
    )
    .expect("examples/readme_service.rs");
    let code: String = file
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        readme_example(),
        code,
        "the README's example and examples/readme_service.rs differ"
    );
}

#[test]
fn the_readme_example_runs() {
    // Integration tests run from target/<profile>/deps; examples are built beside it.
    let exe = std::env::current_exe().expect("test binary");
    let example = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/readme_service");
    if !example.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "readme_service"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example");
        assert!(status.success(), "cargo build --example readme_service");
    }
    let out = Command::new(&example)
        .env_remove("MICROBUS_NATS")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the example");
    assert!(
        out.status.success(),
        "the README's example failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
