//! The seams between the roles, read from the source: a module of one role never imports another
//! role's internals (they meet in `proto` and the small shared modules), sibling modules never
//! import each other in a circle, and no source file grows into a hub.
//!
//! `cargo test --test it layout -- --nocapture` prints the role-level import graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The roles: each may import itself and the shared modules, never another role.
const ROLES: &[&str] = &["server", "agent", "guest", "cli"];
/// Modules every role may use; they import no role themselves.
const SHARED: &[&str] = &[
    "proto",
    "crypto",
    "ids",
    "fsutil",
    "time",
    "urlencode",
    "settings",
    "prom",
    "tls",
];
/// Where the roles are put together: the binary's entry point and the clap tree (which builds each
/// role's settings from flags), the single-machine setup (a server with its own agent) and the
/// benchmark (which measures the server, the agent and bare QEMU side by side).
const COMPOSITION: &[&str] = &["main.rs", "cli/mod.rs", "local.rs", "bench"];
/// No source file is a hub.
const MAX_LINES: usize = 900;

struct Source {
    rel: String,
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read src")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p
                    .strip_prefix(root)
                    .expect("under src")
                    .to_string_lossy()
                    .into_owned();
                let mut module: Vec<String> = rel
                    .trim_end_matches(".rs")
                    .split('/')
                    .map(str::to_string)
                    .collect();
                if matches!(
                    module.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    module.pop();
                }
                let text = std::fs::read_to_string(&p).expect("read source");
                out.push(Source { rel, module, text });
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

/// The code of a file without comments (doc comments name other roles freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every crate path a file names: `crate::a::b`, `super::x` resolved against its module, and the
/// members of `use crate::{a::b, c::{d, e}}` groups, each as a list of segments from the root.
fn paths(src: &Source) -> Vec<Vec<String>> {
    let code = code(&src.text);
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        (code[i..j].to_string(), j)
    };
    // A path from `start`, after its root (`crate::` or resolved `super::`s), into `out`.
    fn follow(
        code: &str,
        mut i: usize,
        prefix: Vec<String>,
        out: &mut Vec<Vec<String>>,
        ident: &dyn Fn(usize) -> (String, usize),
    ) -> usize {
        let bytes = code.as_bytes();
        let mut path = prefix;
        loop {
            if bytes.get(i) == Some(&b'{') {
                // A group: each comma-separated member continues this path.
                i += 1;
                loop {
                    while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                        i += 1;
                    }
                    if i >= bytes.len() || bytes[i] == b'}' {
                        return i + 1;
                    }
                    let before = i;
                    i = follow(code, i, path.clone(), out, ident);
                    if i == before {
                        i += 1;
                    }
                }
            }
            let (name, j) = ident(i);
            if name.is_empty() {
                out.push(path);
                return i;
            }
            if name != "self" {
                path.push(name);
            }
            i = j;
            if code[i..].starts_with("::") {
                i += 2;
            } else {
                out.push(path);
                return i;
            }
        }
    }
    let tests_at = code.find("mod tests {").unwrap_or(code.len());
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && rest.starts_with("crate::") {
            i = follow(&code, i + 7, Vec::new(), &mut out, &ident);
        } else if boundary && rest.starts_with("super::") {
            // `super` of `a::b` (a/b.rs or a/b/mod.rs alike) is `a`; inside the file's inline
            // `mod tests` it is `a::b` itself.
            let mut base = src.module.clone();
            if i < tests_at {
                base.pop();
            }
            let mut j = i + 7;
            while code[j..].starts_with("super::") {
                base.pop();
                j += 7;
            }
            i = follow(&code, j, base, &mut out, &ident);
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn top(module: &[String]) -> &str {
    module.first().map(String::as_str).unwrap_or("")
}

fn is_composition(rel: &str) -> bool {
    COMPOSITION
        .iter()
        .any(|c| rel == *c || rel.starts_with(&format!("{c}/")) || rel == format!("{c}.rs"))
}

#[test]
fn roles_meet_only_in_proto_and_shared_modules() {
    let mut graph: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for src in sources() {
        let from = top(&src.module).to_string();
        for p in paths(&src) {
            let to = p[0].clone();
            if to == from {
                continue;
            }
            *graph.entry((from.clone(), to.clone())).or_default() += 1;
            if is_composition(&src.rel) {
                continue;
            }
            let from_role = ROLES.contains(&from.as_str());
            let from_shared = SHARED.contains(&from.as_str());
            let to_role = ROLES.contains(&to.as_str());
            if (from_role || from_shared) && to_role {
                wrong.push(format!("src/{} imports crate::{}", src.rel, p.join("::")));
            }
        }
    }
    println!("role-level imports (from -> to: paths):");
    for ((from, to), n) in &graph {
        println!("  {from:>10} -> {to:<10} {n}");
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "a role imports another role's internals; move what they share into proto or a shared module:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn sibling_modules_do_not_import_each_other_in_a_circle() {
    let srcs = sources();
    let modules: BTreeSet<Vec<String>> = srcs.iter().map(|s| s.module.clone()).collect();
    // File-level edges between siblings (same parent, neither the parent itself).
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for src in &srcs {
        for p in paths(src) {
            // The longest prefix that is a module file.
            let target = (1..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|m| modules.contains(m));
            let Some(target) = target else { continue };
            let siblings = target.len() == src.module.len()
                && target.len() > 1
                && target[..target.len() - 1] == src.module[..src.module.len() - 1]
                && target != src.module;
            if siblings {
                edges.entry(src.module.clone()).or_default().insert(target);
            }
        }
    }
    let mut cycles = Vec::new();
    for (a, outs) in &edges {
        for b in outs {
            if a < b && edges.get(b).is_some_and(|o| o.contains(a)) {
                cycles.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "sibling modules import each other; move what both need into a module of its own:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn no_source_file_is_a_hub() {
    let mut big: Vec<String> = sources()
        .iter()
        .filter_map(|s| {
            let n = s.text.lines().count();
            (n > MAX_LINES).then(|| format!("src/{}: {n} lines", s.rel))
        })
        .collect();
    big.sort();
    assert!(
        big.is_empty(),
        "split these by concept (at most {MAX_LINES} lines each):\n{}",
        big.join("\n")
    );
}

#[test]
fn the_reader_resolves_grouped_and_relative_paths() {
    let src = Source {
        rel: "agent/api/vms.rs".into(),
        module: vec!["agent".into(), "api".into(), "vms".into()],
        text: "use crate::{proto::api::{A, B}, server::db};\nuse super::streams::x; // crate::cli::y\nlet t = super::super::vm::Vm;".into(),
    };
    let got: BTreeSet<String> = paths(&src).iter().map(|p| p.join("::")).collect();
    let want: BTreeSet<String> = [
        "proto::api::A",
        "proto::api::B",
        "server::db",
        "agent::api::streams::x",
        "agent::vm::Vm",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
}
