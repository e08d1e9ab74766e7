//! Architecture checks over the sources in `src/`: no reference cycle between files, no
//! reference from a lower layer up to a higher one (the [`LAYERS`] table), no file over
//! [`MAX_LINES`] lines.
//!
//! Run with `cargo test --test architecture`.
//!
//! How references are found (std only: a small lexer, not a Rust parser):
//! - Modules: `lib.rs` is the crate root (node `lib`); `main.rs` is the binary's root (node
//!   `main`), which reaches the library by the package name (`busgate::`); `a/mod.rs` is `a`;
//!   `a/b.rs` and `a/b/mod.rs` are `a::b`; an inline `mod x { .. }` is `<file's module>::x`.
//! - Comments (`//`, `///`, `//!`, nested `/* */`) and string, raw string and char literals are
//!   blanked first, so paths in docs and strings do not count; lifetimes (`'a`) are kept.
//! - `#[cfg(test)]` (possibly followed by more attributes) `mod name { .. }` is dropped whole.
//! - Paths: every leaf of a `use` tree (`pub use` too; braces expanded, `a::{self}` is `a`,
//!   `a::*` is `a`), and every other path in code whose first segment is `crate`, `super`
//!   (repeatable), `self`, a child module of the current module (`call::unicast` in
//!   `connector/mod.rs`), or a name a `use` of the same file bound to a module
//!   (`use crate::telemetry;` then `telemetry::metrics::X`). A segment right after `::` never
//!   starts a path. Anything else is an external crate or a local item and is ignored.
//!   `mod x;` is a declaration, not a reference.
//! - `super` is relative to the module (in `a::b` it is `a`, in `a` the crate root), `self` is
//!   the module itself.
//! - A path resolves to the file whose module is its longest prefix. A path that lands on
//!   `lib.rs` (`crate::Error`) follows lib.rs's `use`/`pub use` of that name to the file it
//!   comes from; otherwise it is a reference to `lib`. References of a file to itself are
//!   ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// Layers of the top-level modules of `src/`, lower number = lower layer. A file may reference
/// files of its own top-level module or of a lower layer, never of a higher one.
const LAYERS: &[(&str, u32)] = &[
    ("allocator", 0), // the global allocator the binaries install; uses nothing of ours
    ("wire", 0),      // the Microbus wire protocol: subjects, frames, codec; pure, no I/O
    ("error", 1),     // the error every layer returns, rendered as wire's error body
    ("config", 2),    // settings: the typed tables, config.yaml, deployments
    ("transport", 3), // NATS and the in-process bus, moving wire messages
    ("telemetry", 4), // traces, metrics and logs of everything above the transport
    ("connector", 5), // a service instance: serves endpoints and calls others over a bus
    ("services", 6),  // core services built on the connector
    ("ingress", 7),   // HTTP and SMTP in, bus requests out, through connectors
    ("examples", 8),  // example services, written as users write theirs, on the whole library
    ("cli", 9),       // the command line: arguments and the wiring of what a command runs
    ("fuzzing", 9),   // the properties the fuzz targets check, over any of the above
    ("lib", 10),      // the library's root: module declarations and re-exports
    ("main", 10),     // the binary: command line, wires everything together
];

/// The longest a source file may be.
const MAX_LINES: usize = 800;

// ---------------------------------------------------------------------------------------------
// Lexing: comments and literals out, then tokens.
// ---------------------------------------------------------------------------------------------

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_ident(text: &str) -> bool {
    text.chars().next().is_some_and(is_ident_char)
}

/// `src` with comments and literals replaced by spaces; newlines stay so line numbers do.
fn blank_comments_and_literals(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        let end = if chars[i..].starts_with(&['/', '/']) {
            line_comment_end(&chars, i)
        } else if chars[i..].starts_with(&['/', '*']) {
            block_comment_end(&chars, i)
        } else if let Some(end) = raw_string_end(&chars, i) {
            end
        } else if chars[i] == '"' {
            string_end(&chars, i)
        } else if let Some(end) = char_literal_end(&chars, i) {
            end
        } else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        out.extend(
            chars[i..end]
                .iter()
                .map(|&c| if c == '\n' { '\n' } else { ' ' }),
        );
        i = end;
    }
    out
}

/// End of a `//` comment (`///` and `//!` included): the newline, which is kept.
fn line_comment_end(chars: &[char], start: usize) -> usize {
    chars[start..]
        .iter()
        .position(|&c| c == '\n')
        .map_or(chars.len(), |n| start + n)
}

/// End of a `/* */` comment; Rust's block comments nest.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        if chars[i..].starts_with(&['/', '*']) {
            depth += 1;
            i += 2;
        } else if chars[i..].starts_with(&['*', '/']) {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// End of a raw string (`r"…"`, `r#"…"#`, `br"…"`, `cr#"…"#`) starting at `start`, if one does.
fn raw_string_end(chars: &[char], start: usize) -> Option<usize> {
    if start > 0 && is_ident_char(chars[start - 1]) {
        return None; // the `r` of an identifier such as `bar"`
    }
    let mut i = start;
    if matches!(chars.get(i), Some('b' | 'c')) {
        i += 1;
    }
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    i += hashes;
    if chars.get(i) != Some(&'"') {
        return None; // `r#ident` is a raw identifier
    }
    i += 1;
    // Escapes mean nothing here: the first `"` followed by as many `#` as opened closes it.
    while i < chars.len() {
        let closing_hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
        if chars[i] == '"' && closing_hashes >= hashes {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

/// End of a `"…"` string (also `b"…"`, whose `b` stays as a harmless identifier).
fn string_end(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// End of a char literal (`'a'`, `'"'`, `'\''`, `'\u{7f}'`) at `start`; `None` for a lifetime
/// or a label (`'a`, `'static`), which never has a closing quote right after one char.
fn char_literal_end(chars: &[char], start: usize) -> Option<usize> {
    if chars[start] != '\'' {
        return None;
    }
    if *chars.get(start + 1)? == '\\' {
        // The escaped char sits at start + 2, so the closing quote is at start + 3 or later.
        let close = (start + 3..chars.len().min(start + 12)).find(|&i| chars[i] == '\'')?;
        return Some(close + 1);
    }
    (chars.get(start + 2) == Some(&'\'')).then_some(start + 3)
}

/// One token of blanked code: an identifier (or number), `::`, or a single punctuation char.
#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
}

fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let len = if c.is_whitespace() {
            line += usize::from(c == '\n');
            i += 1;
            continue;
        } else if is_ident_char(c) {
            chars[i..].iter().take_while(|&&c| is_ident_char(c)).count()
        } else if chars[i..].starts_with(&[':', ':']) {
            2
        } else {
            1
        };
        tokens.push(Token {
            text: chars[i..i + len].iter().collect(),
            line,
        });
        i += len;
    }
    tokens
}

fn is_at(tokens: &[Token], i: usize, text: &str) -> bool {
    tokens.get(i).is_some_and(|t| t.text == text)
}

/// Index of the bracket closing the one opened at `open`.
fn matching_close(
    tokens: &[Token],
    open: usize,
    open_text: &str,
    close_text: &str,
) -> Option<usize> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        if token.text == open_text {
            depth += 1;
        } else if token.text == close_text {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// The tokens without `#[cfg(test)] mod name { .. }`: unit tests may reach anywhere.
fn drop_test_modules(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        match test_module_end(&tokens, i) {
            Some(end) => i = end,
            None => {
                kept.push(tokens[i].clone());
                i += 1;
            }
        }
    }
    kept
}

/// If a `#[cfg(test)]` module starts at `start`, the index after its closing brace.
fn test_module_end(tokens: &[Token], start: usize) -> Option<usize> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    if !(0..CFG_TEST.len()).all(|k| is_at(tokens, start + k, CFG_TEST[k])) {
        return None;
    }
    let mut i = start + CFG_TEST.len();
    while is_at(tokens, i, "#") && is_at(tokens, i + 1, "[") {
        i = matching_close(tokens, i + 1, "[", "]")? + 1; // more attributes, e.g. #[allow(..)]
    }
    if is_at(tokens, i, "pub") {
        i += 1;
        if is_at(tokens, i, "(") {
            i = matching_close(tokens, i, "(", ")")? + 1;
        }
    }
    let named_module = is_at(tokens, i, "mod")
        && tokens.get(i + 1).is_some_and(|t| is_ident(&t.text))
        && is_at(tokens, i + 2, "{");
    if !named_module {
        return None; // a test-only fn, or `mod tests;` in its own file
    }
    Some(matching_close(tokens, i + 2, "{", "}")? + 1)
}

// ---------------------------------------------------------------------------------------------
// Extracting paths as written.
// ---------------------------------------------------------------------------------------------

/// A path as written in one file, before it is resolved.
#[derive(Debug, Clone, PartialEq)]
struct RawPath {
    /// `crate::a::B` is `["crate", "a", "B"]`; a glob `a::*` is `["a"]` with `glob` set.
    segments: Vec<String>,
    glob: bool,
    /// The name a `use` leaf binds (its `as` alias or last segment); `None` in code and globs.
    binds: Option<String>,
    /// The inline modules (`mod x { .. }`) around the path, outermost first.
    scope: Vec<String>,
    line: usize,
}

impl RawPath {
    fn text(&self) -> String {
        let mut text = self.segments.join("::");
        if self.glob {
            text.push_str("::*");
        }
        text
    }
}

/// Every `use` leaf and every path of two or more segments in the code of `src`.
fn extract_paths(src: &str) -> Vec<RawPath> {
    let tokens = drop_test_modules(tokenize(&blank_comments_and_literals(src)));
    let mut paths = Vec::new();
    // One entry per open brace: the module name if it opened an inline `mod name {`.
    let mut braces: Vec<Option<String>> = Vec::new();
    let scope = |braces: &[Option<String>]| braces.iter().flatten().cloned().collect::<Vec<_>>();
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].text.as_str() {
            "{" => {
                braces.push(inline_module_name(&tokens, i));
                i += 1;
            }
            "}" => {
                braces.pop();
                i += 1;
            }
            // `use<'a>` is precise capturing in `impl Trait + use<'a>`, not an import.
            "use" if !is_at(&tokens, i + 1, "<") => {
                let mut leaves = Vec::new();
                match parse_use_tree(&tokens, i + 1, &[], &mut leaves) {
                    Some(end) => {
                        let scope = scope(&braces);
                        paths.extend(leaves.into_iter().map(|leaf| RawPath {
                            scope: scope.clone(),
                            ..leaf
                        }));
                        i = end;
                    }
                    None => i += 1,
                }
            }
            _ => match code_path(&tokens, i) {
                Some((segments, end)) => {
                    paths.push(RawPath {
                        segments,
                        glob: false,
                        binds: None,
                        scope: scope(&braces),
                        line: tokens[i].line,
                    });
                    i = end;
                }
                None => i += 1,
            },
        }
    }
    paths
}

/// The name of the inline module whose body the brace at `open` starts, if it does.
fn inline_module_name(tokens: &[Token], open: usize) -> Option<String> {
    let name = tokens.get(open.checked_sub(1)?)?;
    let keyword = tokens.get(open.checked_sub(2)?)?;
    (keyword.text == "mod" && is_ident(&name.text)).then(|| name.text.clone())
}

/// Parses the use tree at `i` (after `use`, or inside braces), adding its leaves with `prefix`
/// before them. Returns the index after the tree, or `None` if the tokens are not a use tree.
fn parse_use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[String],
    leaves: &mut Vec<RawPath>,
) -> Option<usize> {
    let mut segments = prefix.to_vec();
    if is_at(tokens, i, "::") {
        i += 1; // `use ::name` names an external crate, as `use name` does
    }
    loop {
        let token = tokens.get(i)?;
        match token.text.as_str() {
            "*" => {
                leaves.push(RawPath {
                    segments,
                    glob: true,
                    binds: None,
                    scope: Vec::new(),
                    line: token.line,
                });
                return Some(i + 1);
            }
            "{" => {
                i += 1;
                while !is_at(tokens, i, "}") {
                    i = parse_use_tree(tokens, i, &segments, leaves)?;
                    if is_at(tokens, i, ",") {
                        i += 1;
                    } else if !is_at(tokens, i, "}") {
                        return None;
                    }
                }
                return Some(i + 1);
            }
            name if is_ident(name) => {
                segments.push(name.to_string());
                i += 1;
                if is_at(tokens, i, "::") {
                    i += 1;
                    continue;
                }
                let mut binds = name.to_string();
                if is_at(tokens, i, "as") {
                    binds = tokens.get(i + 1)?.text.clone();
                    i += 2;
                }
                // `a::{self}` imports `a` itself, under its own name unless renamed.
                if segments.len() > 1 && name == "self" {
                    segments.pop();
                    if binds == "self" {
                        binds = segments.last()?.clone();
                    }
                }
                leaves.push(RawPath {
                    segments,
                    glob: false,
                    binds: (binds != "_").then_some(binds),
                    scope: Vec::new(),
                    line: token.line,
                });
                return Some(i);
            }
            _ => return None,
        }
    }
}

/// The segments of a path `a::b[::c…]` starting at `start`, and the index after it. A segment
/// right after `::` is the middle of a longer path, not a start.
fn code_path(tokens: &[Token], start: usize) -> Option<(Vec<String>, usize)> {
    let first = tokens.get(start)?;
    if !is_ident(&first.text) || (start > 0 && tokens[start - 1].text == "::") {
        return None;
    }
    let mut segments = vec![first.text.clone()];
    let mut i = start + 1;
    while is_at(tokens, i, "::") {
        match tokens.get(i + 1) {
            Some(next) if is_ident(&next.text) => segments.push(next.text.clone()),
            _ => break, // `::<T>` turbofish
        }
        i += 2;
    }
    (segments.len() > 1).then_some((segments, i))
}

// ---------------------------------------------------------------------------------------------
// Resolving paths to files.
// ---------------------------------------------------------------------------------------------

/// A `.rs` file of `src/` and the module it defines.
struct SourceFile {
    /// Path under `src/` with `/` separators, e.g. `connector/mod.rs`.
    rel: String,
    /// `[]` for lib.rs (and main.rs), `["connector"]` for connector/mod.rs.
    module: Vec<String>,
    /// False for main.rs: the binary is a crate of its own and reaches the library by name.
    in_library: bool,
    lines: usize,
    paths: Vec<RawPath>,
}

impl SourceFile {
    fn new(rel: &str, text: &str) -> SourceFile {
        let mut module: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(String::from)
            .collect();
        if matches!(rel, "lib.rs" | "main.rs") {
            module.clear();
        } else if module.last().is_some_and(|last| last == "mod") {
            module.pop();
        }
        SourceFile {
            rel: rel.to_string(),
            module,
            in_library: rel != "main.rs",
            lines: text.lines().count(),
            paths: extract_paths(text),
        }
    }

    fn display(&self) -> String {
        format!("src/{}", self.rel)
    }

    /// The first path segment under src/ (`connector`, `config`), or `lib` / `main`.
    fn top_module(&self) -> &str {
        match self.module.first() {
            Some(top) => top,
            None => self.rel.trim_end_matches(".rs"),
        }
    }
}

/// One path in one file that resolves to another file.
#[derive(Debug, Clone)]
struct Reference {
    from: usize,
    to: usize,
    line: usize,
    text: String,
}

struct Resolver<'a> {
    files: &'a [SourceFile],
    /// Module path -> file, library files only.
    by_module: HashMap<Vec<String>, usize>,
    /// Names lib.rs imports (`pub use config::BusConfig`) -> their absolute paths.
    lib_imports: HashMap<String, Vec<String>>,
    /// The library's name as main.rs writes it: `busgate`.
    library_name: String,
}

impl<'a> Resolver<'a> {
    fn new(files: &'a [SourceFile]) -> Resolver<'a> {
        let by_module = files
            .iter()
            .enumerate()
            .filter(|(_, file)| file.in_library)
            .map(|(i, file)| (file.module.clone(), i))
            .collect();
        let mut resolver = Resolver {
            files,
            by_module,
            lib_imports: HashMap::new(),
            library_name: env!("CARGO_PKG_NAME").replace('-', "_"),
        };
        if let Some(&lib) = resolver.by_module.get(&Vec::new()) {
            let no_bindings = HashMap::new();
            resolver.lib_imports = files[lib]
                .paths
                .iter()
                .filter_map(|path| {
                    let name = path.binds.clone()?;
                    Some((
                        name,
                        resolver.absolute_path(&files[lib], path, &no_bindings)?,
                    ))
                })
                .collect();
        }
        resolver
    }

    fn is_module(&self, path: &[String]) -> bool {
        self.by_module.contains_key(path)
    }

    fn is_child_module(&self, module: &[String], name: &str) -> bool {
        let mut child = module.to_vec();
        child.push(name.to_string());
        self.is_module(&child)
    }

    /// The names a file's `use` leaves bind to modules: `use crate::telemetry;` binds
    /// `telemetry` to `["telemetry"]`, so `telemetry::metrics::X` can be followed.
    fn module_bindings(&self, file: &SourceFile) -> HashMap<String, Vec<String>> {
        let no_bindings = HashMap::new();
        file.paths
            .iter()
            .filter_map(|path| {
                let name = path.binds.clone()?;
                let target = self.absolute_path(file, path, &no_bindings)?;
                self.is_module(&target).then_some((name, target))
            })
            .collect()
    }

    /// The path from the library's root, or `None` for an external crate or a local item.
    fn absolute_path(
        &self,
        file: &SourceFile,
        path: &RawPath,
        bindings: &HashMap<String, Vec<String>>,
    ) -> Option<Vec<String>> {
        let scope: Vec<String> = file.module.iter().chain(&path.scope).cloned().collect();
        let (first, rest) = path.segments.split_first()?;
        let (base, rest) = match first.as_str() {
            // main.rs's own `crate::` is main.rs itself: the binary has no other files.
            "crate" | "self" | "super" if !file.in_library => return None,
            "crate" => (Vec::new(), rest),
            "self" => (scope, rest),
            "super" => {
                let mut base = scope;
                let mut rest = &path.segments[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                (base, rest)
            }
            name if !file.in_library && name == self.library_name => (Vec::new(), rest),
            name if file.in_library && self.is_child_module(&scope, name) => {
                (scope, &path.segments[..]) // `call::unicast` in connector/mod.rs
            }
            name => (bindings.get(name)?.clone(), rest),
        };
        Some(base.into_iter().chain(rest.iter().cloned()).collect())
    }

    /// The file defining the module that is the longest prefix of `path`. A path that lands
    /// on lib.rs follows lib.rs's import of its first segment, if it has one.
    fn file_of(&self, path: &[String], hops: usize) -> Option<usize> {
        let prefix = (0..=path.len())
            .rev()
            .find(|&k| self.is_module(&path[..k]))?;
        if prefix == 0 && hops < 8 {
            if let Some(target) = path.first().and_then(|name| self.lib_imports.get(name)) {
                let full: Vec<String> = target.iter().chain(&path[1..]).cloned().collect();
                return self.file_of(&full, hops + 1);
            }
        }
        Some(self.by_module[&path[..prefix]])
    }

    fn references(&self) -> Vec<Reference> {
        let mut references = Vec::new();
        for (from, file) in self.files.iter().enumerate() {
            let bindings = self.module_bindings(file);
            for path in &file.paths {
                let Some(absolute) = self.absolute_path(file, path, &bindings) else {
                    continue;
                };
                match self.file_of(&absolute, 0) {
                    Some(to) if to != from => references.push(Reference {
                        from,
                        to,
                        line: path.line,
                        text: path.text(),
                    }),
                    _ => {}
                }
            }
        }
        references
    }
}

/// The files of a crate and the references between them.
struct Analysis {
    files: Vec<SourceFile>,
    references: Vec<Reference>,
}

impl Analysis {
    /// `sources`: (path under src/, text) pairs.
    fn new(sources: &[(String, String)]) -> Analysis {
        let files: Vec<SourceFile> = sources
            .iter()
            .map(|(rel, text)| SourceFile::new(rel, text))
            .collect();
        let references = Resolver::new(&files).references();
        Analysis { files, references }
    }

    /// The crate's own `src/`.
    fn of_src() -> Analysis {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut sources = Vec::new();
        read_sources(&src, &src, &mut sources);
        sources.sort();
        Analysis::new(&sources)
    }

    /// Each (from, to) file pair once, with its first reference as the example.
    fn edges(&self) -> BTreeMap<(usize, usize), &Reference> {
        let mut edges = BTreeMap::new();
        for reference in &self.references {
            edges
                .entry((reference.from, reference.to))
                .or_insert(reference);
        }
        edges
    }

    fn describe(&self, reference: &Reference) -> String {
        format!(
            "{} -> {}  ({}:{} `{}`)",
            self.files[reference.from].display(),
            self.files[reference.to].display(),
            self.files[reference.from].display(),
            reference.line,
            reference.text
        )
    }
}

/// Every `.rs` file under `dir`, as (path relative to `root` with `/`, text).
fn read_sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            read_sources(root, &path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let rel = path.strip_prefix(root).expect("under src/");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cycles.
// ---------------------------------------------------------------------------------------------

/// Tarjan's strongly connected components over nodes `0..adjacency.len()`.
struct Tarjan<'a> {
    adjacency: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next_index: usize,
    components: Vec<Vec<usize>>,
}

fn strongly_connected_components(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adjacency.len();
    let mut tarjan = Tarjan {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next_index: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if tarjan.index[v].is_none() {
            tarjan.visit(v);
        }
    }
    tarjan.components
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next_index);
        self.low[v] = self.next_index;
        self.next_index += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.adjacency[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(w_index) if self.on_stack[w] => self.low[v] = self.low[v].min(w_index),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            loop {
                let w = self.stack.pop().expect("v is on the stack");
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            self.components.push(component);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------------------------

#[test]
fn no_import_cycle_between_files() {
    let analysis = Analysis::of_src();
    let edges = analysis.edges();
    let mut adjacency = vec![Vec::new(); analysis.files.len()];
    for &(from, to) in edges.keys() {
        adjacency[from].push(to);
    }
    let mut cycles: Vec<Vec<usize>> = strongly_connected_components(&adjacency)
        .into_iter()
        .filter(|component| component.len() > 1)
        .collect();
    cycles.sort();

    let mut report = String::new();
    for (n, cycle) in cycles.iter().enumerate() {
        let _ = writeln!(
            report,
            "\ncycle {} of {}: {} files",
            n + 1,
            cycles.len(),
            cycle.len()
        );
        for &file in cycle {
            let _ = writeln!(report, "  {}", analysis.files[file].display());
        }
        let _ = writeln!(report, "  edges:");
        for (&(from, to), reference) in &edges {
            if cycle.contains(&from) && cycle.contains(&to) {
                let _ = writeln!(report, "    {}", analysis.describe(reference));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "{} reference cycle(s) between files of src/:\n{report}",
        cycles.len()
    );
}

#[test]
fn no_arrow_from_a_lower_layer_to_a_higher_one() {
    let analysis = Analysis::of_src();
    let layers: HashMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut unlisted: Vec<&str> = analysis
        .files
        .iter()
        .map(SourceFile::top_module)
        .filter(|top| !layers.contains_key(top))
        .collect();
    unlisted.sort_unstable();
    unlisted.dedup();
    assert!(
        unlisted.is_empty(),
        "top-level modules missing from LAYERS: {unlisted:?}"
    );

    let mut violations = Vec::new();
    for reference in &analysis.references {
        let (from, to) = (
            &analysis.files[reference.from],
            &analysis.files[reference.to],
        );
        let (from_top, to_top) = (from.top_module(), to.top_module());
        let (from_layer, to_layer) = (layers[from_top], layers[to_top]);
        if from_top != to_top && from_layer < to_layer {
            violations.push(format!(
                "  {}:{} `{}` -> {}: {from_top} ({from_layer}) -> {to_top} ({to_layer})",
                from.display(),
                reference.line,
                reference.text,
                to.display(),
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "{} reference(s) from a lower layer to a higher one (see LAYERS):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn no_file_over_800_lines() {
    let analysis = Analysis::of_src();
    let offenders: Vec<String> = analysis
        .files
        .iter()
        .filter(|file| file.lines > MAX_LINES)
        .map(|file| format!("  {}: {} lines", file.display(), file.lines))
        .collect();
    assert!(
        offenders.is_empty(),
        "{} file(s) over {MAX_LINES} lines:\n{}",
        offenders.len(),
        offenders.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The analyzer's own checks.
// ---------------------------------------------------------------------------------------------

fn path_texts(src: &str) -> Vec<String> {
    extract_paths(src).iter().map(RawPath::text).collect()
}

#[test]
fn parser_expands_use_trees() {
    let src = "use crate::a::{b::{self, C}, d::*};\n\
               pub(crate) use super::super::e as f;\n\
               pub use self::g::{H, self as g2};\n\
               use std::fmt;\n";
    let paths = extract_paths(src);
    let texts: Vec<String> = paths.iter().map(RawPath::text).collect();
    assert_eq!(
        texts,
        [
            "crate::a::b",
            "crate::a::b::C",
            "crate::a::d::*",
            "super::super::e",
            "self::g::H",
            "self::g",
            "std::fmt"
        ]
    );
    let binds: Vec<Option<&str>> = paths.iter().map(|p| p.binds.as_deref()).collect();
    assert_eq!(
        binds,
        [
            Some("b"),
            Some("C"),
            None,
            Some("f"),
            Some("H"),
            Some("g2"),
            Some("fmt")
        ]
    );
    let lines: Vec<usize> = paths.iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 1, 1, 2, 3, 3, 4]);
}

#[test]
fn parser_ignores_paths_in_comments_and_literals() {
    let src = r##"
//! crate::inner_doc::A
/// crate::outer_doc::B
// crate::line::C
/* crate::block::D /* crate::nested::E */ crate::block::F */
fn f<'a>(s: &'a str) -> &'static str {
    let _ = "crate::string::G \" crate::escaped::H";
    let _ = r#"crate::raw::I "quoted" crate::raw::J"#;
    let _ = ('"', '\'', '{', b'x', '\u{7f}');
    crate::real::K(s)
}
"##;
    assert_eq!(path_texts(src), ["crate::real::K"]);
    assert_eq!(extract_paths(src)[0].line, 10);
}

#[test]
fn parser_drops_unit_test_modules_and_tracks_inline_modules() {
    let src = "use crate::kept::A;\n\
               #[cfg(test)]\n\
               #[allow(dead_code)]\n\
               mod tests {\n    use crate::dropped::B;\n    fn f() { crate::dropped::C(); }\n}\n\
               mod inline {\n    fn g() { super::D; }\n}\n\
               fn h() { x.collect::<Vec<_>>(); crate::kept::E(); }\n";
    let paths = extract_paths(src);
    let found: Vec<(String, Vec<String>, usize)> = paths
        .iter()
        .map(|p| (p.text(), p.scope.clone(), p.line))
        .collect();
    let inline = vec!["inline".to_string()];
    assert_eq!(
        found,
        [
            ("crate::kept::A".to_string(), vec![], 1),
            ("super::D".to_string(), inline, 9),
            ("crate::kept::E".to_string(), vec![], 11),
        ]
    );
}

#[test]
fn resolver_follows_super_children_bindings_and_lib_reexports() {
    let crate_name = env!("CARGO_PKG_NAME").replace('-', "_");
    let sources: Vec<(String, String)> = [
        ("lib.rs", "pub mod a;\npub mod b;\npub use a::Thing;\n".to_string()),
        ("a/mod.rs", "mod child;\npub struct Thing;\nfn f() { child::run(); }\n".to_string()),
        (
            "a/child.rs",
            "use super::super::b::helper;\npub fn run() { let _ = crate::Thing; }\n".to_string(),
        ),
        (
            "b.rs",
            "pub fn helper() {}\nmod inner { fn g() { super::helper(); self::x(); } }\nfn h() { crate::Missing::new(); }\n"
                .to_string(),
        ),
        (
            "main.rs",
            format!("use {crate_name}::b;\nfn main() {{ b::helper(); {crate_name}::a::Thing; crate::local(); }}\n"),
        ),
    ]
    .into_iter()
    .map(|(rel, text)| (rel.to_string(), text))
    .collect();
    let analysis = Analysis::new(&sources);
    let mut found: Vec<String> = analysis
        .references
        .iter()
        .map(|r| {
            format!(
                "{} -> {}: {}",
                analysis.files[r.from].rel, analysis.files[r.to].rel, r.text
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![
        "lib.rs -> a/mod.rs: a::Thing".to_string(),
        "a/mod.rs -> a/child.rs: child::run".to_string(),
        "a/child.rs -> b.rs: super::super::b::helper".to_string(),
        "a/child.rs -> a/mod.rs: crate::Thing".to_string(),
        "b.rs -> lib.rs: crate::Missing::new".to_string(),
        format!("main.rs -> b.rs: {crate_name}::b"),
        "main.rs -> b.rs: b::helper".to_string(),
        format!("main.rs -> a/mod.rs: {crate_name}::a::Thing"),
    ];
    expected.sort();
    assert_eq!(found, expected);
}
