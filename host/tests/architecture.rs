//! The dependencies that must never exist (docs/architecture.md), checked on
//! the source: which top-level modules of `host/src` name which others.
//!
//! A module "uses" another when one of its files names `crate::<other>` (in
//! a `use` or a path).
//! Test modules and comments are left out: a test may
//! set up anything, and a comment may name anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source of every file of `host/src`, by top-level module name, with
/// `#[cfg(test)]` blocks at the end of a file cut off.
fn modules() -> BTreeMap<String, Vec<(PathBuf, String)>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read host/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a name");
            let module = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).expect("read a source file");
            // Test-only files and the tests at the end of a file.
            let test_only = relative.ends_with("tests.rs")
                || relative.ends_with("conformance.rs")
                || relative
                    .components()
                    .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "conformance");
            if test_only {
                continue;
            }
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text,
            };
            // Comments may name anything.
            let code: String = code
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .map(|line| format!("{line}\n"))
                .collect();
            out.entry(module).or_default().push((path, code));
        }
    }
    out
}

/// The top-level modules each module names, with the first file naming each.
fn uses() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let modules = modules();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (module, files) in &modules {
        let mut used: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (path, code) in files {
            for other in &names {
                if other == module || other == "lib" || other == "main" {
                    continue;
                }
                let named = code.contains(&format!("crate::{other}::"))
                    || code.contains(&format!("crate::{other};"))
                    || code.contains(&format!("crate::{other}::{{"))
                    || code.contains(&format!("crate::{{{other}"));
                if named {
                    used.entry(other.clone()).or_insert_with(|| path.clone());
                }
            }
        }
        out.insert(module.clone(), used);
    }
    out
}

fn assert_never(uses: &BTreeMap<String, BTreeMap<String, PathBuf>>, from: &str, to: &[&str]) {
    let used = uses.get(from).unwrap_or_else(|| panic!("no module {from}"));
    for other in to {
        if let Some(path) = used.get(*other) {
            panic!(
                "{from} must not depend on {other}, but {} names it",
                path.display()
            );
        }
    }
}

#[test]
fn the_store_knows_no_wasm_and_no_http() {
    let uses = uses();
    assert_never(
        &uses,
        "store",
        &[
            "runtime",
            "api",
            "command",
            "projection",
            "saga",
            "deploy",
            "lease",
            "server",
        ],
    );
}

#[test]
fn the_runtime_knows_no_database_and_no_http() {
    let uses = uses();
    assert_never(
        &uses,
        "runtime",
        &["api", "command", "projection", "saga", "deploy", "server"],
    );
    for (path, code) in &modules()["runtime"] {
        for backend in ["sqlx", "crate::store::sqlite", "crate::store::postgres"] {
            assert!(
                !code.contains(backend),
                "{} names {backend}",
                path.display()
            );
        }
    }
}

#[test]
fn the_pipeline_and_the_runners_know_no_http() {
    let uses = uses();
    for module in [
        "command",
        "projection",
        "saga",
        "deploy",
        "lease",
        "registry",
    ] {
        assert_never(&uses, module, &["api", "server"]);
    }
}

#[test]
fn projections_issue_no_commands_and_leases_know_no_holders() {
    let uses = uses();
    assert_never(&uses, "projection", &["command", "saga"]);
    assert_never(&uses, "lease", &["projection", "saga", "command"]);
}

#[test]
fn no_cycles_between_top_level_modules() {
    let uses = uses();
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        node: &str,
        uses: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == node) {
            panic!("import cycle: {} -> {node}", path[i..].join(" -> "));
        }
        path.push(node.to_string());
        for next in uses.get(node).into_iter().flat_map(|u| u.keys()) {
            visit(next, uses, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for module in uses.keys() {
        visit(module, &uses, &mut Vec::new(), &mut done);
    }
}
