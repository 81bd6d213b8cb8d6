//! The JavaScript and Python plugins of `plugins/` and `plugins/fixtures/`,
//! found by their own manifests (the build script only lists them; the
//! library builds them on demand, see `src/polyglot.rs`).
//!
//! A JavaScript plugin's `package.json`:
//!
//! ```json
//! "kiln": { "kind": "example", "world": "aggregate", "entry": "src/plugin.js", "plugin": "bank_account" }
//! ```
//!
//! A Python plugin's `pyproject.toml`:
//!
//! ```toml
//! [tool.kiln]
//! kind = "example"
//! world = "aggregate"
//! app = "app"              # the entry module
//! plugin = "bank_account"
//! ```
//!
//! `plugin` (the component's file stem, the name the host uses) defaults
//! to the directory's name. The directory's name is the plugin's
//! identifier in the generated code (`bank_account_js()`,
//! `foreach_fixture!`), so it must be unique and a Rust identifier.

use std::fs;
use std::path::Path;

use crate::members::Kind;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Language {
    JavaScript,
    Python,
}

impl Language {
    /// The variant's name in the library's `polyglot::Language`.
    pub fn variant(self) -> &'static str {
        match self {
            Language::JavaScript => "JavaScript",
            Language::Python => "Python",
        }
    }

    /// Where its examples go, under `<target>/plugins`.
    pub fn examples_dir(self) -> &'static str {
        match self {
            Language::JavaScript => "javascript",
            Language::Python => "python",
        }
    }
}

#[derive(Debug)]
pub struct PolyglotPlugin {
    /// The directory's name.
    pub id: String,
    pub language: Language,
    pub kind: Kind,
    pub world: String,
    /// Relative to the workspace root.
    pub dir: String,
    /// JavaScript: the entry module, relative to `dir`. Python: the entry
    /// module's name.
    pub entry: String,
    /// The component's file stem.
    pub plugin: String,
}

const WORLDS: &[&str] = &["aggregate", "projection", "saga"];

/// Every JavaScript and Python plugin, sorted by identifier.
pub fn plugins(workspace: &Path) -> Vec<PolyglotPlugin> {
    let mut found = Vec::new();
    for parent in ["plugins", "plugins/fixtures"] {
        let Ok(entries) = fs::read_dir(workspace.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let relative = format!("{parent}/{}", entry.file_name().to_string_lossy());
            if let Some(plugin) = javascript(&dir, &relative) {
                found.push(plugin);
            }
            if let Some(plugin) = python(&dir, &relative) {
                found.push(plugin);
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    for pair in found.windows(2) {
        assert!(
            pair[0].id != pair[1].id,
            "two JavaScript or Python plugins are named {}",
            pair[0].id
        );
    }
    found
}

fn javascript(dir: &Path, relative: &str) -> Option<PolyglotPlugin> {
    let manifest = dir.join("package.json");
    let text = fs::read_to_string(&manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", manifest.display()));
    let kiln = json.get("kiln")?;
    let field = |name: &str| -> Option<String> {
        kiln.get(name).map(|value| {
            value
                .as_str()
                .unwrap_or_else(|| panic!("{}: kiln.{name} must be a string", manifest.display()))
                .to_string()
        })
    };
    Some(plugin(
        relative,
        Language::JavaScript,
        &manifest,
        [
            field("kind"),
            field("world"),
            field("entry"),
            field("plugin"),
        ],
    ))
}

fn python(dir: &Path, relative: &str) -> Option<PolyglotPlugin> {
    let manifest = dir.join("pyproject.toml");
    let text = fs::read_to_string(&manifest).ok()?;
    let toml: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: not TOML: {e}", manifest.display()));
    let kiln = toml.get("tool")?.get("kiln")?;
    let field = |name: &str| -> Option<String> {
        kiln.get(name).map(|value| {
            value
                .as_str()
                .unwrap_or_else(|| {
                    panic!("{}: tool.kiln.{name} must be a string", manifest.display())
                })
                .to_string()
        })
    };
    Some(plugin(
        relative,
        Language::Python,
        &manifest,
        [field("kind"), field("world"), field("app"), field("plugin")],
    ))
}

fn plugin(
    relative: &str,
    language: Language,
    manifest: &Path,
    [kind, world, entry, plugin]: [Option<String>; 4],
) -> PolyglotPlugin {
    let whose = manifest.display().to_string();
    let id = relative
        .rsplit('/')
        .next()
        .expect("a relative path has a last part")
        .to_string();
    assert!(
        !id.is_empty()
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !id.starts_with(|c: char| c.is_ascii_digit()),
        "{whose}: the directory's name {id:?} must be a Rust identifier"
    );
    let kind = Kind::parse(
        kind.as_deref()
            .unwrap_or_else(|| panic!("{whose}: the kiln metadata needs a kind")),
        &whose,
    );
    let world = world.unwrap_or_else(|| panic!("{whose}: the kiln metadata needs a world"));
    assert!(
        WORLDS.contains(&world.as_str()),
        "{whose}: the world must be one of {WORLDS:?}, not {world:?}"
    );
    let entry = entry.unwrap_or_else(|| panic!("{whose}: the kiln metadata needs an entry"));
    PolyglotPlugin {
        plugin: plugin.unwrap_or_else(|| id.clone()),
        id,
        language,
        kind,
        world,
        dir: relative.to_string(),
        entry,
    }
}
