//! Layers only point down: every module of the runtime and of the macro
//! crate names only the modules `docs/architecture.md` allows it to
//! ("Layers and the directions they may point"), through `use` lines or
//! inline `crate::`/`super::` paths. A forbidden direction fails here, with
//! the file and line that names it.
//!
//! The rules are read from the document itself, so the list a contributor
//! reads is the list that is checked. Comments and string literals are not
//! code and are skipped (a doc link to an upper layer is not a dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's rules: module -> the modules it may name.
type Rules = BTreeMap<String, BTreeSet<String>>;

/// Parses the rule block of `docs/architecture.md`: after the line
/// `<!-- layers -->`, lines `crate-dir:` start a crate, lines
/// `  module -> a b c` give a module's allowed targets, until
/// `<!-- /layers -->`.
fn rules(doc: &str) -> BTreeMap<String, Rules> {
    let start = doc
        .find("<!-- layers -->")
        .expect("docs/architecture.md has a <!-- layers --> block");
    let end = doc[start..]
        .find("<!-- /layers -->")
        .expect("the layers block ends with <!-- /layers -->")
        + start;
    let mut out: BTreeMap<String, Rules> = BTreeMap::new();
    let mut current = None;
    for line in doc[start..end].lines().skip(1) {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with("```") {
            continue;
        }
        if let Some(name) = line.strip_suffix(':').filter(|l| !l.starts_with(' ')) {
            current = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let (module, targets) = line
            .split_once("->")
            .unwrap_or_else(|| panic!("a rule line is `module -> targets`: {line:?}"));
        let krate = current.as_ref().expect("a crate line comes first");
        let allowed = targets.split_whitespace().map(str::to_string).collect();
        out.get_mut(krate)
            .unwrap()
            .insert(module.trim().to_string(), allowed);
    }
    out
}

/// `text` with comments, string and character literals blanked out (line
/// breaks kept, so that line numbers stay right).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = text[i..].find('\n').map_or(b.len(), |e| i + e);
            blank(&mut out, &b[i..end]);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            blank(&mut out, &b[i..end]);
            i = end;
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // A raw string r"..." or r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            let end = text[body..]
                .find(&close)
                .map_or(b.len(), |e| body + e + close.len());
            blank(&mut out, &b[i..end]);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, &b[i..end]);
            i = end;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            blank(&mut out, &b[i..i + 3]);
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let end = text[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e + 1);
            blank(&mut out, &b[i..end]);
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The module path of a source file relative to `src/`: `cpu/ctx.rs` ->
/// `[cpu, ctx]`, `cpu/mod.rs` -> `[cpu]`, `lib.rs` -> `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every top-level module that `code` (of the file at module path `here`)
/// names, with the line it is named on. `reexports` maps the names the
/// crate root re-exports (`crate::Float`) to their module.
fn named_modules(
    code: &str,
    here: &[String],
    reexports: &BTreeMap<String, String>,
) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let top_of = |name: &str| -> Option<String> {
        if name.chars().next().is_some_and(char::is_uppercase) || reexports.contains_key(name) {
            reexports.get(name).cloned()
        } else if name.is_empty() || name == "self" {
            None
        } else {
            Some(name.to_string())
        }
    };
    for (n, line) in code.lines().enumerate() {
        // Every `crate::` path; a `{` group after it names each member.
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue; // `$crate::`, `sparsenet_runtime::crate`...
            }
            if let Some(group) = rest.strip_prefix('{') {
                let close = group.find('}').unwrap_or(group.len());
                for item in group[..close].split(',') {
                    if let Some(t) = top_of(&ident(item.trim())) {
                        found.push((t, n + 1));
                    }
                }
            } else if let Some(t) = top_of(&ident(rest)) {
                found.push((t, n + 1));
            }
        }
        // `super::` paths that climb to the crate root.
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            let before = rest[..at].chars().last();
            let mut tail = &rest[at..];
            let mut climbs = 0;
            while let Some(t) = tail.strip_prefix("super::") {
                climbs += 1;
                tail = t;
            }
            rest = tail;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            // In `a/b.rs` (module a::b) `super` is `a`; climbing past the
            // top reaches the root, whose next segment is a top module.
            if climbs >= here.len() {
                let name = ident(tail.trim_start_matches('{'));
                if let Some(t) = top_of(&name) {
                    found.push((t, n + 1));
                }
            }
        }
    }
    found
}

/// The root's `pub use module::{Name, ...}` lines: name -> module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in code_only(lib).lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        let items = items.trim_end_matches(';').trim_matches(['{', '}']);
        for item in items.split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`.
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

/// The violations of `rules` in the sources `files` (relative path, text)
/// of one crate: `file:line: a -> b`.
fn violations(rules: &Rules, files: &[(PathBuf, String)]) -> Vec<String> {
    let lib = files
        .iter()
        .find(|(p, _)| p == Path::new("lib.rs"))
        .map_or("", |(_, t)| t.as_str());
    let reexports = root_reexports(lib);
    let mut bad = Vec::new();
    for (rel, text) in files {
        let here = module_path(rel);
        let Some(top) = here.first() else {
            continue; // the crate root wires everything together
        };
        let Some(allowed) = rules.get(top) else {
            bad.push(format!(
                "{}: module `{top}` has no line in the layers block of docs/architecture.md",
                rel.display()
            ));
            continue;
        };
        for (target, line) in named_modules(&code_only(text), &here, &reexports) {
            if target != *top && !allowed.contains(&target) && rules.contains_key(&target) {
                bad.push(format!("{}:{line}: {top} -> {target}", rel.display()));
            }
        }
    }
    bad
}

/// A cycle in `rules`, if any, as the modules along it.
fn cycle(rules: &Rules) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        rules: &Rules,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for t in rules.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, rules, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    rules
        .keys()
        .find_map(|m| visit(m, rules, &mut Vec::new(), &mut done))
}

#[test]
fn layers_only_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let all = rules(&doc);
    assert!(all.contains_key("sparsenet-runtime"), "{all:?}");
    let mut bad = Vec::new();
    for (krate, rules) in &all {
        if let Some(c) = cycle(rules) {
            bad.push(format!("{krate}: the rules go round: {}", c.join(" -> ")));
        }
        let src = root.join(krate).join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        let files: Vec<(PathBuf, String)> = paths
            .iter()
            .map(|p| {
                (
                    p.strip_prefix(&src).unwrap().to_path_buf(),
                    std::fs::read_to_string(p).unwrap(),
                )
            })
            .collect();
        bad.extend(
            violations(rules, &files)
                .into_iter()
                .map(|v| format!("{krate}/src/{v}")),
        );
    }
    assert!(
        bad.is_empty(),
        "forbidden directions (docs/architecture.md, \"Layers\"):\n{}",
        bad.join("\n")
    );
}

/// The checker itself: a planted upward import is found through each form
/// a path can take, and what is not code is not.
#[test]
fn a_planted_upward_import_is_found() {
    let rules: Rules = [
        ("float", vec![]),
        ("cpu", vec!["float"]),
        ("train", vec!["float"]),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.into_iter().map(String::from).collect()))
    .collect();
    let file = |p: &str, t: &str| (PathBuf::from(p), t.to_string());
    let lib = file("lib.rs", "mod cpu;\npub use float::Float;\n");
    let clean = [
        lib.clone(),
        file(
            "cpu/ctx.rs",
            "use crate::Float;\n// see crate::train::Trainer\nconst S: &str = \"crate::train\";\n/// [`crate::train`]\nfn f() {}\n",
        ),
    ];
    assert_eq!(violations(&rules, &clean), Vec::<String>::new());
    for (path, text, want) in [
        (
            "cpu/ctx.rs",
            "use crate::train::Trainer;\n",
            "cpu/ctx.rs:1: cpu -> train",
        ),
        (
            "cpu/mod.rs",
            "use crate::{float::X, train};\n",
            "cpu/mod.rs:1: cpu -> train",
        ),
        (
            "cpu/a/b.rs",
            "fn f() {\n    crate::train::go();\n}\n",
            "cpu/a/b.rs:2: cpu -> train",
        ),
        (
            "cpu.rs",
            "use super::train::go;\n",
            "cpu.rs:1: cpu -> train",
        ),
        (
            "cpu/x.rs",
            "use super::super::train;\n",
            "cpu/x.rs:1: cpu -> train",
        ),
    ] {
        let got = violations(&rules, &[lib.clone(), file(path, text)]);
        assert_eq!(got, vec![want.to_string()], "{text}");
    }
    // `super` inside a module stays inside it.
    assert!(violations(&rules, &[lib.clone(), file("cpu/x.rs", "use super::y;\n")]).is_empty());
    let cyclic: Rules = [("a", vec!["b"]), ("b", vec!["a"])]
        .into_iter()
        .map(|(m, t)| (m.to_string(), t.into_iter().map(String::from).collect()))
        .collect();
    assert!(cycle(&cyclic).is_some());
}
