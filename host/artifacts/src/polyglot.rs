//! The JavaScript and Python plugins of `plugins/`, built into components
//! when first asked for, so that building the host needs Rust alone.
//!
//! A test asks for a component by calling its function (`bank_account_js()`,
//! `fixture_raise_py()`, …, generated from [`POLYGLOT_PLUGINS`](crate::POLYGLOT_PLUGINS)):
//! the first call in a process installs the language's toolchain if needed
//! and builds the component if one of its inputs changed; later calls
//! return at once. Several test processes may ask at the same time: each
//! language's work runs under a file lock (`<target>/polyglot/<language>.lock`),
//! so it happens once per target directory and the others wait for it.
//!
//! The toolchains are installed under the target directory, never in the
//! repository: `npm ci` of `sdk/js/package-lock.json` into
//! `<target>/polyglot/js/node_modules` (npm's cache in
//! `<target>/polyglot/npm-cache`), and a virtualenv with
//! `sdk/python/requirements.txt` in `<target>/polyglot/venv` (pip's cache in
//! `<target>/polyglot/pip-cache`); each install runs again only when its lock
//! file changes. A component is rebuilt only when one of its inputs (its
//! sources, the SDK, the WIT, the installed toolchain) changes: the inputs'
//! hash is kept beside the component in `<file>.inputs`. This needs `node`
//! and `npm` (JavaScript) or `python3` (Python) on `PATH`, and the package
//! registries for the first install.

mod inputs;
mod run;
mod toolchain;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use toolchain::{ensure_node_modules, ensure_python};
pub use toolchain::{link_js_sdk, node_modules, python};

/// The language a plugin is written in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Language {
    JavaScript,
    Python,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::JavaScript => "JavaScript",
            Language::Python => "Python",
        })
    }
}

/// Installing a toolchain or building a component failed. The message says
/// what was run and what it printed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    fn io(what: &str, path: &Path, error: &std::io::Error) -> Self {
        Self(format!("{what} {}: {error}", path.display()))
    }
}

/// A JavaScript or Python plugin of `plugins/`, as its manifest describes
/// it (`package.json`'s `kiln` object, `pyproject.toml`'s `[tool.kiln]`).
#[derive(Debug)]
pub struct Plugin {
    /// Its directory's name, e.g. `bank_account_js`.
    pub id: &'static str,
    pub language: Language,
    /// The WIT world it implements.
    pub world: &'static str,
    /// Its directory (absolute).
    pub dir: &'static str,
    /// JavaScript: the entry module, relative to `dir`. Python: the entry
    /// module's name.
    pub entry: &'static str,
    /// Where its component goes: `<target>/plugins/<language>/<name>.wasm`
    /// for an example, `<target>/plugins/fixtures/<name>.wasm` for a fixture.
    pub component_path: &'static str,
    /// A fixture (listed by `foreach_fixture!`) rather than an example.
    pub fixture: bool,
    built: OnceLock<Result<(), Error>>,
}

impl Plugin {
    #[doc(hidden)]
    pub const fn new(
        id: &'static str,
        language: Language,
        world: &'static str,
        dir: &'static str,
        entry: &'static str,
        component_path: &'static str,
        fixture: bool,
    ) -> Self {
        Self {
            id,
            language,
            world,
            dir,
            entry,
            component_path,
            fixture,
            built: OnceLock::new(),
        }
    }

    /// Build the component unless it is up to date; its path.
    pub fn build(&self) -> Result<&'static str, Error> {
        self.built
            .get_or_init(|| toolchain::locked(self.language, || build_one(self)))
            .clone()
            .map(|()| self.component_path)
    }

    /// [`Plugin::build`] for tests: panics with the build's error.
    pub fn component(&self) -> &'static str {
        self.build().unwrap_or_else(|error| {
            panic!("building the {} plugin {}: {error}", self.language, self.id)
        })
    }
}

/// Build every example of `language`; the directory holding them
/// ([`JAVASCRIPT_DIR`](crate::JAVASCRIPT_DIR) or
/// [`PYTHON_DIR`](crate::PYTHON_DIR)), so that `kiln serve --plugins <dir>`
/// runs them in place of the Rust ones.
pub fn build_examples(language: Language) -> Result<&'static str, Error> {
    for plugin in crate::POLYGLOT_PLUGINS
        .iter()
        .filter(|p| p.language == language && !p.fixture)
    {
        plugin.build()?;
    }
    Ok(match language {
        Language::JavaScript => crate::JAVASCRIPT_DIR,
        Language::Python => crate::PYTHON_DIR,
    })
}

fn workspace() -> &'static Path {
    Path::new(crate::WORKSPACE_DIR)
}

fn build_one(plugin: &Plugin) -> Result<(), Error> {
    let dest = Path::new(plugin.component_path);
    // The toolchain first: its install stamp is one of the inputs.
    let toolchain = match plugin.language {
        Language::JavaScript => ensure_node_modules()?,
        Language::Python => ensure_python()?,
    };
    let inputs = inputs::hash(workspace(), plugin)?;
    let stamp = dest.with_extension("wasm.inputs");
    if dest.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == inputs) {
        return Ok(());
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, &e))?;
    }
    let wit = workspace().join("wit");
    let mut command = match plugin.language {
        Language::JavaScript => {
            link_js_sdk(Path::new(plugin.dir))?;
            let mut command = Command::new("node");
            command
                .arg(workspace().join("sdk/js/build.mjs"))
                .arg("--node-modules")
                .arg(toolchain)
                .arg("--entry")
                .arg(Path::new(plugin.dir).join(plugin.entry));
            command
        }
        Language::Python => {
            let mut command = Command::new(toolchain);
            command
                .args(["-m", "kiln_sdk.build", "--app", plugin.entry, "--path"])
                .arg(plugin.dir)
                .env("PYTHONPATH", workspace().join("sdk/python"));
            command
        }
    };
    command
        .current_dir(workspace())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("--wit")
        .arg(&wit)
        .arg("--world")
        .arg(plugin.world)
        .arg("--out")
        .arg(dest);
    run::run(&mut command, &format!("building {}", plugin.dir))?;
    fs::write(&stamp, &inputs).map_err(|e| Error::io("cannot write", &stamp, &e))
}

/// `<target>/polyglot`.
fn polyglot_dir() -> PathBuf {
    Path::new(crate::TARGET_DIR).join("polyglot")
}
