//! The Rust plugins: the workspace members that say they are one, read
//! from `cargo metadata` (so the list is the workspace's member list, never
//! a copy of it).
//!
//! A plugin crate says so in its `Cargo.toml`:
//!
//! ```toml
//! [package.metadata.kiln]
//! kind = "example"   # or "fixture"
//! ```

use std::path::Path;

use serde_json::Value;

/// Where a plugin's component goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Well-behaved example plugins, copied to `<target>/plugins/`.
    Example,
    /// Misbehaving plugins for the host's tests, copied to
    /// `<target>/plugins/fixtures/`.
    Fixture,
}

impl Kind {
    pub fn parse(text: &str, whose: &str) -> Kind {
        match text {
            "example" => Kind::Example,
            "fixture" => Kind::Fixture,
            other => panic!(
                "{whose}: the kiln metadata's kind must be \"example\" or \"fixture\", not {other:?}"
            ),
        }
    }
}

/// A plugin crate: its package name is the component's file stem, which is
/// also the plugin name the host uses.
#[derive(Debug)]
pub struct Plugin {
    pub package: String,
    pub kind: Kind,
    /// Built by a nested cargo build of its own, in a target directory of
    /// its own: the plugin depends on another plugin crate.
    ///
    /// Cargo unifies the features of every package one build selects: a
    /// plugin that depends on another plugin crate without that crate's
    /// exports (`default-features = false`, as `fixture_flaky_bank` depends
    /// on `bank_account`) would get them anyway when that crate is built
    /// beside it, and its component would not link ("duplicate symbol:
    /// handle"). A target directory of its own also keeps the dependency's
    /// export-less component from overwriting the real one: a component's
    /// file name has no hash.
    pub alone: bool,
}

/// Every plugin of the workspace, in `cargo metadata`'s order (sorted by
/// package name, so the generated code does not move when members do).
pub fn plugins(workspace: &Path) -> Vec<Plugin> {
    let mut command = crate::nested_cargo(workspace);
    command.args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]);
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run `cargo metadata` ({command:?}): {e}"));
    assert!(
        output.status.success(),
        "`cargo metadata` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("`cargo metadata` printed something that is not JSON: {e}"));
    from_metadata(&metadata)
}

fn from_metadata(metadata: &Value) -> Vec<Plugin> {
    let packages = metadata["packages"]
        .as_array()
        .expect("`cargo metadata` lists the packages");
    let mut found: Vec<(String, Kind, Vec<String>)> = Vec::new();
    for package in packages {
        let name = package["name"].as_str().expect("a package has a name");
        let Some(kind) = package["metadata"]["kiln"].get("kind") else {
            continue;
        };
        let kind = Kind::parse(
            kind.as_str()
                .unwrap_or_else(|| panic!("{name}: the kiln metadata's kind must be a string")),
            name,
        );
        let dependencies = package["dependencies"]
            .as_array()
            .map(|deps| {
                deps.iter()
                    .filter_map(|dep| dep["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        found.push((name.to_string(), kind, dependencies));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<String> = found.iter().map(|(name, ..)| name.clone()).collect();
    found
        .into_iter()
        .map(|(package, kind, dependencies)| Plugin {
            alone: dependencies.iter().any(|dep| names.contains(dep)),
            package,
            kind,
        })
        .collect()
}
