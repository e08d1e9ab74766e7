//! Replays every input kept in `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//! through the properties of `busgate::fuzzing`, on stable Rust and without libFuzzer: the
//! inputs a fuzz run found interesting, and each crash it found (minimised, once fixed), stay
//! tests. `scripts/fuzz` runs the fuzzers themselves.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use busgate::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_still_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name}/ is empty: every target keeps its corpus"
        );
        let regressions = inputs(&root.join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("a readable input");
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
        println!(
            "{name}: {} corpus inputs, {} regressions passed",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
