//! The Dockerfile's build stages replayed without a Docker engine: the planner and the
//! dependency build run as the Dockerfile says, in scratch directories standing in for each
//! stage's filesystem, with the build context filtered by `.dockerignore`. A Dockerfile whose
//! dependency layer drifts from `Cargo.toml` (a target the placeholders forget) fails here,
//! as it would in `docker build`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn parse(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        pending.clear();
    }
    out
}

/// The files `docker build .` sends: what git knows of (tracked or not ignored), less
/// `.dockerignore`'s patterns.
fn build_context() -> Vec<PathBuf> {
    let patterns: Vec<String> = std::fs::read_to_string(repo().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let ignored = |path: &str| {
        patterns.iter().any(|p| {
            if let Some(ext) = p.strip_prefix("**/*") {
                path.ends_with(ext)
            } else {
                assert!(
                    !p.contains(['*', '?', '[', '!']),
                    ".dockerignore pattern {p:?} is not understood by this replay: extend it"
                );
                path == p || path.starts_with(&format!("{p}/"))
            }
        })
    };
    let out = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .current_dir(repo())
        .output()
        .expect("git lists the build context");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|p| !p.is_empty() && !ignored(p))
        .filter(|p| repo().join(p).is_file())
        .map(PathBuf::from)
        .collect()
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        copy_file(from, to);
    }
}

/// A stage's filesystem: a scratch root, the working directory and the environment.
#[derive(Clone)]
struct Stage {
    root: PathBuf,
    workdir: String,
    env: BTreeMap<String, String>,
    /// A cargo command has run in this stage (its dependency layer exists).
    built: bool,
}

impl Stage {
    fn path(&self, p: &str) -> PathBuf {
        let absolute = if p.starts_with('/') {
            p.to_owned()
        } else if p == "." || p == "./" {
            self.workdir.clone()
        } else {
            format!("{}/{p}", self.workdir)
        };
        self.root.join(absolute.trim_start_matches('/'))
    }
}

/// What the replay did, for the assertions.
struct Replay {
    stages: BTreeMap<String, Stage>,
    /// (stage, command) of every RUN executed.
    ran: Vec<(String, String)>,
    /// (stage, step) where the sources were about to be copied in.
    stopped_at: Option<(String, String)>,
}

/// Replays `dockerfile` up to the point where a stage that already built dependencies copies
/// the sources in. `RUN cargo install <tool> --version V` is checked against the tool on
/// this machine instead of being run; `apt-get` lines are skipped (the runtime stage only).
fn replay(dockerfile: &str, scratch: &Path, target_dir: &Path) -> Result<Replay, String> {
    let context = build_context();
    let mut stages: BTreeMap<String, Stage> = BTreeMap::new();
    let mut current: Option<(String, Stage)> = None;
    let mut ran = Vec::new();
    for (n, ins) in parse(dockerfile).into_iter().enumerate() {
        match ins.keyword.as_str() {
            "FROM" => {
                if let Some((name, stage)) = current.take() {
                    stages.insert(name, stage);
                }
                let words: Vec<&str> = ins.args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                    _ => format!("stage{n}"),
                };
                let root = scratch.join(&name);
                std::fs::create_dir_all(&root).unwrap();
                let stage = match stages.get(words[0]) {
                    Some(base) => {
                        copy_tree(&base.root, &root);
                        Stage {
                            root,
                            ..base.clone()
                        }
                    }
                    None => Stage {
                        root,
                        workdir: "/".into(),
                        env: BTreeMap::new(),
                        built: false,
                    },
                };
                current = Some((name, stage));
            }
            "WORKDIR" => {
                let (_, stage) = current.as_mut().expect("WORKDIR after FROM");
                stage.workdir = ins.args.clone();
                std::fs::create_dir_all(stage.path(".")).unwrap();
            }
            "ENV" => {
                let (_, stage) = current.as_mut().expect("ENV after FROM");
                for pair in ins.args.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("ENV {pair}: use KEY=value"))?;
                    stage.env.insert(k.into(), v.trim_matches('"').into());
                }
            }
            "COPY" => {
                let (name, stage) = current.as_mut().expect("COPY after FROM");
                let mut words: Vec<&str> = ins.args.split_whitespace().collect();
                let from = words
                    .first()
                    .and_then(|w| w.strip_prefix("--from="))
                    .map(str::to_owned);
                if from.is_some() {
                    words.remove(0);
                }
                let (dest, sources) = words.split_last().expect("COPY src... dest");
                if from.is_none()
                    && stage.built
                    && sources.iter().any(|s| *s == "." || s.starts_with("src"))
                {
                    let stopped_at = Some((name.clone(), format!("COPY {}", ins.args)));
                    current_into(&mut stages, current.take());
                    return Ok(Replay {
                        stages,
                        ran,
                        stopped_at,
                    });
                }
                let dest_path = stage.path(dest);
                for src in sources {
                    match &from {
                        Some(other) => {
                            let other = stages
                                .get(other)
                                .ok_or_else(|| format!("COPY --from={other}: no such stage"))?;
                            let path = other.path(src);
                            if !path.exists() {
                                return Err(format!(
                                    "COPY --from: {src} does not exist in that stage"
                                ));
                            }
                            let target = if dest.ends_with('/') || sources.len() > 1 {
                                dest_path.join(path.file_name().unwrap())
                            } else {
                                dest_path.clone()
                            };
                            copy_tree(&path, &target);
                        }
                        None => {
                            let src = src.trim_end_matches('/');
                            let matching: Vec<&PathBuf> = context
                                .iter()
                                .filter(|p| src == "." || p.starts_with(src))
                                .collect();
                            if matching.is_empty() {
                                return Err(format!("COPY {src}: not in the build context"));
                            }
                            for p in matching {
                                let relative = if src == "." || Path::new(src) == p.as_path() {
                                    if src == "." {
                                        p.clone()
                                    } else {
                                        PathBuf::from(p.file_name().unwrap())
                                    }
                                } else {
                                    // As Docker does: a directory's contents, not the
                                    // directory itself, go into the destination.
                                    p.strip_prefix(src).unwrap().to_path_buf()
                                };
                                copy_file(&repo().join(p), &dest_path.join(relative));
                            }
                        }
                    }
                }
            }
            "RUN" => {
                let (name, stage) = current.as_mut().expect("RUN after FROM");
                let cmd = ins.args.clone();
                if let Some(rest) = cmd.strip_prefix("cargo install ") {
                    let tool = rest.split_whitespace().next().unwrap();
                    let version = rest
                        .split_whitespace()
                        .skip_while(|w| *w != "--version")
                        .nth(1)
                        .ok_or_else(|| format!("RUN {cmd}: pin the version (--version)"))?;
                    let sub = tool.strip_prefix("cargo-").unwrap_or(tool);
                    let out = Command::new("cargo")
                        .args([sub, "--version"])
                        .output()
                        .map_err(|e| e.to_string())?;
                    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
                    if !seen.contains(version) {
                        return Err(format!(
                            "the Dockerfile installs {tool} {version}, this machine has {seen:?} \
                             (scripts/test installs it: cargo install {tool} --locked --version {version})"
                        ));
                    }
                    continue;
                }
                if cmd.starts_with("apt-get") {
                    continue;
                }
                let out = Command::new("sh")
                    .args(["-c", &cmd])
                    .current_dir(stage.path("."))
                    .envs(&stage.env)
                    .env("CARGO_TARGET_DIR", target_dir)
                    .output()
                    .map_err(|e| e.to_string())?;
                ran.push((name.clone(), cmd.clone()));
                if !out.status.success() {
                    return Err(format!(
                        "stage {name}: RUN {cmd} failed:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                if cmd.contains("cargo ") {
                    stage.built = true;
                }
            }
            _ => {}
        }
    }
    current_into(&mut stages, current.take());
    Ok(Replay {
        stages,
        ran,
        stopped_at: None,
    })
}

fn current_into(stages: &mut BTreeMap<String, Stage>, current: Option<(String, Stage)>) {
    if let Some((name, stage)) = current {
        stages.insert(name, stage);
    }
}

/// Where the replayed dependency build keeps its artifacts: outside the clone, so that a
/// later run (CI on the same machine) reuses them.
fn replay_target_dir() -> PathBuf {
    let base = std::env::var_os("BUSGATE_TOOLS_CACHE")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("busgate")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/busgate")))
        .unwrap_or_else(|| repo().join("target"));
    base.join("docker-replay-target")
}

#[test]
fn dockerfile_build_stages_replay_up_to_the_dependency_build() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let scratch = TempDir::new("docker-replay");
    let replay = replay(&dockerfile, &scratch.0, &replay_target_dir())
        .unwrap_or_else(|e| panic!("the image would not build: {e}"));
    // It got as far as copying the sources into a stage whose dependencies were built, and
    // that dependency build compiled something (not an empty placeholder step).
    let (stage, step) = replay
        .stopped_at
        .expect("a build stage copies the sources after building the dependencies");
    assert!(step.starts_with("COPY"), "{stage}: {step}");
    assert!(
        replay
            .ran
            .iter()
            .any(|(_, cmd)| cmd.contains("cargo chef cook") && cmd.contains("--release")),
        "the dependency layer is a release `cargo chef cook`: {:?}",
        replay.ran
    );
    // The planner's recipe names every target of Cargo.toml (benches included).
    let planner = &replay.stages["planner"];
    let recipe = std::fs::read_to_string(planner.path("recipe.json")).unwrap();
    for target in [
        "src/main.rs",
        "src/lib.rs",
        "benches/telemetry.rs",
        "benches/hot_paths.rs",
    ] {
        assert!(recipe.contains(target), "recipe lacks {target}");
    }
}

#[test]
fn the_runtime_image_gets_a_stripped_binary_built_from_the_same_stage() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ins = parse(&dockerfile);
    let strip = ins.iter().any(|i| {
        i.keyword == "ENV"
            && i.args.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")
            && i.args.contains("CARGO_PROFILE_RELEASE_DEBUG=0")
    });
    assert!(strip, "release builds in the image are stripped");
    let copies: Vec<&Instruction> = ins
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.contains("--from=build"))
        .collect();
    assert_eq!(copies.len(), 1);
    assert!(copies[0].args.contains("/src/target/release/busgate"));
    let last_run = ins
        .iter()
        .rfind(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .unwrap();
    assert!(last_run.args.contains("--release") && last_run.args.contains("--locked"));
}
