//! The module graph keeps the shape `docs/architecture.md` draws: imports
//! point one way (`node → http → transport → hub → (router, record)`,
//! `kafka → hub`), and no two modules import each other in a circle.
//!
//! Reads `src/` as text: every `use crate::…` / `use super::…` and every
//! inline `crate::…` path outside comments and `#[cfg(test)] mod tests`. A
//! failure names the file, the line and the offending path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// (importer prefix, forbidden prefix, why): a module under the first may
/// not import one under the second.
const RULES: &[(&str, &str, &str)] = &[
    (
        "transport",
        "http::routes",
        "the request router calls the transports, not the other way round",
    ),
    (
        "transport",
        "http::stream_connection",
        "the bare event-stream connection calls the transports",
    ),
    ("transport", "kafka", "transports never touch Kafka"),
    ("transport", "node", "node starts the transports"),
    (
        "hub",
        "kafka",
        "kafka feeds the hub; the hub knows no Kafka",
    ),
    ("hub", "http", "the hub is below HTTP"),
    ("hub", "transport", "transports read the hub"),
    ("hub", "app", "the hub is below the shared state"),
    ("kafka", "transport", "the ingest never touches sockets"),
    ("kafka", "http", "the ingest never touches sockets"),
    ("kafka", "app", "kafka is below the shared state"),
    ("router", "hub", "the router is below the hub"),
    ("router", "kafka", "the router is below the ingest"),
    ("router", "config", "the router takes its own RouteSpec"),
    ("record", "", "record is at the bottom"),
    ("metrics", "", "metrics is at the bottom"),
    (
        "per_ip",
        "",
        "per_ip is at the bottom: the listener and replay count with it",
    ),
    ("auth", "", "auth is at the bottom: config and HTTP use it"),
    (
        "stream_ends",
        "",
        "stream_ends is at the bottom: app, HTTP and the transports use it",
    ),
    ("app", "http", "app is the state below HTTP"),
    ("app", "transport", "app is the state below the transports"),
    ("http", "node", "node starts the listener"),
    ("kafka", "push", "nothing imports Web Push back"),
    ("hub", "push", "nothing imports Web Push back"),
    ("transport", "push", "the live path needs no Web Push"),
];

/// A module path: `["http", "routes"]`; the crate root is empty.
type Module = Vec<String>;

/// One import: which module makes it, where it is written and the module
/// it names.
struct Import {
    from: Module,
    file: PathBuf,
    line: usize,
    text: String,
    target: Module,
}

fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `use` tree text without its renames: `a::{b as c, d}` → `a::{b, d}`.
fn without_renames(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = String::new();
    let mut skip = false;
    for (i, w) in words.iter().enumerate() {
        if skip {
            // The new name, and whatever punctuation follows it.
            out.push_str(w.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            skip = false;
        } else if *w == "as" && i > 0 {
            skip = true;
        } else {
            out.push_str(w);
        }
    }
    out
}

/// `a::{b, c::{d}}` → `[[a, b], [a, c, d]]`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = without_renames(tree);
    let Some(open) = tree.find('{') else {
        return vec![
            tree.split("::")
                .filter(|p| !p.is_empty() && *p != "self" && *p != "*")
                .map(str::to_owned)
                .collect(),
        ];
    };
    let head: Vec<String> = tree[..open]
        .split("::")
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| {
            expand(s).into_iter().map(|tail| {
                let mut p = head.clone();
                p.extend(tail);
                p
            })
        })
        .collect()
}

fn imports(src: &Path) -> (BTreeSet<Module>, Vec<Import>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    let mut found = Vec::new();
    for file in &files {
        let me = module_path(src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        // Comments out, line structure kept.
        let code: Vec<String> = text
            .lines()
            .map(|l| l.split("//").next().unwrap().to_owned())
            .collect();
        let joined = code.join("\n");
        let line_of = |offset: usize| joined[..offset].matches('\n').count() + 1;
        let mut paths: Vec<(usize, String, Vec<String>)> = Vec::new();
        let mut at = 0;
        while let Some(i) = joined[at..].find("use ") {
            let start = at + i;
            at = start + 4;
            let before = joined[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let Some(end) = joined[start..].find(';') else {
                break;
            };
            let stmt = joined[start + 4..start + end].trim().to_owned();
            let resolved: Vec<Vec<String>> = if let Some(rest) = stmt.strip_prefix("crate::") {
                expand(rest)
            } else if stmt.starts_with("super::") {
                let mut up = me.clone();
                let mut rest = stmt.as_str();
                while let Some(r) = rest.strip_prefix("super::") {
                    up.pop();
                    rest = r;
                }
                expand(rest)
                    .into_iter()
                    .map(|tail| up.iter().cloned().chain(tail).collect())
                    .collect()
            } else {
                Vec::new()
            };
            for r in resolved {
                paths.push((line_of(start), format!("use {stmt};"), r));
            }
        }
        for (i, _) in joined.match_indices("crate::") {
            if joined[..i].ends_with("use ") || joined[..i].trim_end().ends_with('{') {
                continue;
            }
            let path: String = joined[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let parts: Vec<String> = path
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            paths.push((line_of(i), format!("crate::{path}"), parts));
        }
        for (line, text, path) in paths {
            // The longest prefix that is a module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(target) = target
                && target != me
            {
                found.push(Import {
                    from: me.clone(),
                    file: file.clone(),
                    line,
                    text,
                    target,
                });
            }
        }
    }
    (modules, found)
}

fn under(module: &[String], prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let p: Vec<&str> = prefix.split("::").collect();
    module.len() >= p.len() && module.iter().zip(&p).all(|(a, b)| a == b)
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

#[test]
fn imports_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (_, found) = imports(&src);
    let mut wrong = Vec::new();
    for import in &found {
        let from = &import.from;
        for (importer, forbidden, why) in RULES {
            if !under(from, importer) || under(&import.target, importer) {
                continue;
            }
            // "" forbids every module but the importer's own (and std).
            if under(&import.target, forbidden) {
                wrong.push(format!(
                    "{}:{}: `{}` makes {} import {} ({why})",
                    import.file.strip_prefix(&src).unwrap().display(),
                    import.line,
                    import.text,
                    name(from),
                    name(&import.target),
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layout (docs/architecture.md):\n{}",
        wrong.join("\n")
    );
    // The check sees imports at all (a parser that finds none passes
    // everything).
    assert!(
        found
            .iter()
            .any(|i| name(&i.from) == "transport::sse" && name(&i.target) == "hub"),
        "the layout check found no import of hub from transport::sse: it is not reading src/"
    );
}

#[test]
fn no_module_imports_itself_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, found) = imports(&src);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for m in &modules {
        edges.entry(name(m)).or_default();
    }
    for import in &found {
        // The crate root only re-exports.
        if import.target.is_empty() {
            continue;
        }
        edges.entry(name(&import.from)).or_default().insert(
            name(&import.target),
            format!(
                "{}:{} `{}`",
                import.file.strip_prefix(&src).unwrap().display(),
                import.line,
                import.text
            ),
        );
    }
    // A path back to `start` from each of its imports, by depth-first search.
    fn path_back(
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        at: &str,
        start: &str,
        seen: &mut BTreeSet<String>,
        trail: &mut Vec<String>,
    ) -> bool {
        for (next, how) in &edges[at] {
            trail.push(format!("{at} -> {next} ({how})"));
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) && path_back(edges, next, start, seen, trail) {
                return true;
            }
            trail.pop();
        }
        false
    }
    for start in edges.keys() {
        let mut trail = Vec::new();
        if path_back(&edges, start, start, &mut BTreeSet::new(), &mut trail) {
            panic!(
                "modules import each other in a circle:\n{}",
                trail.join("\n")
            );
        }
    }
}
