//! The tree's shape as a specification: the top-level modules of `src/`
//! (folders and files) import each other without cycles, and `azure` knows
//! nothing of images. Read from the source: every `crate::NAME` outside test
//! code is an edge from the module it is written in.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = common::repo().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = g.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // Doc comments name modules too; only code counts.
            let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
            if code[line_start..i].trim_start().starts_with("//") {
                continue;
            }
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    g
}

/// File → the files it names: each `crate::a::b::…` path outside test code
/// is an edge to the file that defines the longest module prefix of it
/// (`src/a/b.rs` or `src/a/b/mod.rs`).
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = common::repo().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let module = |f: &Path| -> String {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        parts.join("::")
    };
    let modules: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            (
                module(f),
                f.strip_prefix(&src).unwrap().display().to_string(),
            )
        })
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = f.strip_prefix(&src).unwrap().display().to_string();
        if me == "lib.rs" || me == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = g.entry(me.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
            if code[line_start..i].trim_start().starts_with("//") {
                continue;
            }
            let path: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let target = (1..=segments.len())
                .rev()
                .find_map(|n| modules.get(&segments[..n].join("::")));
            if let Some(t) = target
                && *t != me
            {
                deps.insert(t.clone());
            }
        }
    }
    g
}

/// The first cycle of `g`, if any (depth-first search with colours: a grey
/// node met again closes one).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| p == m).unwrap();
                let mut cycle = path[from..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys()
        .find_map(|m| visit(m, g, &mut state, &mut Vec::new()))
}

/// Within the top-level modules too, no two files name each other round a
/// loop (the last one, `cli/commands/mod.rs <-> cli/error.rs` through the
/// JSON schema number, was mended by moving the constant down).
#[test]
fn files_import_each_other_without_cycles() {
    let g = file_graph();
    assert!(g.len() >= 60, "{g:?}");
    assert!(g["cli/commands/mod.rs"].contains("cli/error.rs"), "{g:?}");
    if let Some(c) = cycle(&g) {
        panic!("import cycle between files: {}", c.join(" -> "));
    }
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let g = graph();
    if let Some(c) = cycle(&g) {
        panic!("import cycle: {}", c.join(" -> "));
    }
    assert!(g.len() >= 10, "{g:?}");
}

#[test]
fn the_azure_clients_know_nothing_of_images() {
    let g = graph();
    let azure = &g["azure"];
    assert_eq!(azure.iter().collect::<Vec<_>>(), ["util"], "{g:?}");
    assert!(g["util"].is_empty(), "util uses {:?}", g["util"]);
    assert!(!g["spec"].contains("pipeline") && !g["spec"].contains("cli"));
}
