//! Builds the JavaScript and Python plugins of `plugins/` into components,
//! with the SDKs' own build commands (`sdk/js/build.mjs`,
//! `sdk/python/build.py`).
//!
//! The toolchains are installed under the target directory, never in the
//! repository: `npm ci` of `sdk/js/package-lock.json` into
//! `<target>/polyglot/js/node_modules` (npm's cache in
//! `<target>/polyglot/npm-cache`), and a virtualenv with
//! `sdk/python/requirements.txt` in `<target>/polyglot/venv` (pip's cache in
//! `<target>/polyglot/pip-cache`). Each install runs again only when its
//! lock file changes; each component is rebuilt only when one of its inputs
//! (its sources, the SDK, the WIT, the installed versions) changes: the
//! inputs' hash is kept beside the component in `<file>.inputs`.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

/// The language a plugin is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Language {
    JavaScript,
    Python,
}

/// A plugin written in JavaScript or Python.
pub struct PolyglotPlugin {
    /// The constant naming the component in the generated code.
    pub constant: &'static str,
    /// The component's file stem: the plugin name the host uses.
    pub file_stem: &'static str,
    pub language: Language,
    /// The WIT world it implements.
    pub world: &'static str,
    /// Its directory, relative to the workspace root.
    pub dir: &'static str,
    /// JavaScript: the entry module, relative to `dir`. Python: the module
    /// name of the entry, found in `dir`.
    pub entry: &'static str,
    /// Where the component goes, relative to `<target>/plugins`.
    pub dest_dir: &'static str,
    /// A fixture (listed by `foreach_fixture!`) rather than an example.
    pub fixture: bool,
}

/// Every JavaScript and Python plugin to build.
pub const POLYGLOT_PLUGINS: &[PolyglotPlugin] = &[
    PolyglotPlugin {
        constant: "BANK_ACCOUNT_JS",
        file_stem: "bank_account",
        language: Language::JavaScript,
        world: "aggregate",
        dir: "plugins/bank_account_js",
        entry: "src/plugin.js",
        dest_dir: "javascript",
        fixture: false,
    },
    PolyglotPlugin {
        constant: "BANK_ACCOUNT_PY",
        file_stem: "bank_account",
        language: Language::Python,
        world: "aggregate",
        dir: "plugins/bank_account_py",
        entry: "app",
        dest_dir: "python",
        fixture: false,
    },
    PolyglotPlugin {
        constant: "ACCOUNT_BALANCES_PY",
        file_stem: "account_balances",
        language: Language::Python,
        world: "projection",
        dir: "plugins/account_balances_py",
        entry: "app",
        dest_dir: "python",
        fixture: false,
    },
    PolyglotPlugin {
        constant: "FIXTURE_THROW_JS",
        file_stem: "fixture_throw_js",
        language: Language::JavaScript,
        world: "aggregate",
        dir: "plugins/fixtures/fixture_throw_js",
        entry: "src/plugin.js",
        dest_dir: "fixtures",
        fixture: true,
    },
    PolyglotPlugin {
        constant: "FIXTURE_RAISE_PY",
        file_stem: "fixture_raise_py",
        language: Language::Python,
        world: "aggregate",
        dir: "plugins/fixtures/fixture_raise_py",
        entry: "app",
        dest_dir: "fixtures",
        fixture: true,
    },
];

/// Where the toolchains live, under the target directory.
pub struct Toolchains {
    /// `<target>/polyglot/js/node_modules`.
    pub node_modules: PathBuf,
    /// The virtualenv's interpreter, `<target>/polyglot/venv/bin/python`.
    pub python: PathBuf,
}

impl Toolchains {
    pub fn new(target_dir: &Path) -> Self {
        let root = target_dir.join("polyglot");
        Self {
            node_modules: root.join("js/node_modules"),
            python: root.join("venv/bin/python"),
        }
    }
}

/// The component of `plugin`: `<target>/plugins/<dest_dir>/<file_stem>.wasm`.
pub fn component_path(plugins_dir: &Path, plugin: &PolyglotPlugin) -> PathBuf {
    plugins_dir
        .join(plugin.dest_dir)
        .join(format!("{}.wasm", plugin.file_stem))
}

/// Install both toolchains and build every plugin of
/// [`POLYGLOT_PLUGINS`], JavaScript and Python side by side (the installs
/// wait on the network, the builds on the CPU).
pub fn build_all(workspace: &Path, target_dir: &Path, plugins_dir: &Path) {
    let tools = Toolchains::new(target_dir);
    thread::scope(|scope| {
        let js = scope.spawn(|| {
            install_node_modules(workspace, target_dir);
            build_language(workspace, plugins_dir, &tools, Language::JavaScript);
        });
        let py = scope.spawn(|| {
            install_python(workspace, target_dir, &tools.python);
            build_language(workspace, plugins_dir, &tools, Language::Python);
        });
        for (language, handle) in [("JavaScript", js), ("Python", py)] {
            if let Err(panic) = handle.join() {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("building the {language} plugins failed: {message}");
            }
        }
    });
}

fn build_language(workspace: &Path, plugins_dir: &Path, tools: &Toolchains, language: Language) {
    for plugin in POLYGLOT_PLUGINS.iter().filter(|p| p.language == language) {
        let dest = component_path(plugins_dir, plugin);
        let inputs = inputs_hash(workspace, plugin, tools);
        let stamp = dest.with_extension("wasm.inputs");
        if dest.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == inputs) {
            continue;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        let mut command = match language {
            Language::JavaScript => {
                let mut command = Command::new("node");
                command
                    .arg(workspace.join("sdk/js/build.mjs"))
                    .arg("--node-modules")
                    .arg(&tools.node_modules)
                    .arg("--entry")
                    .arg(workspace.join(plugin.dir).join(plugin.entry));
                command
            }
            Language::Python => {
                let mut command = Command::new(&tools.python);
                command
                    .arg(workspace.join("sdk/python/build.py"))
                    .arg("--app")
                    .arg(plugin.entry)
                    .arg("--path")
                    .arg(workspace.join(plugin.dir));
                command
            }
        };
        command
            .current_dir(workspace)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("--wit")
            .arg(workspace.join("wit"))
            .arg("--world")
            .arg(plugin.world)
            .arg("--out")
            .arg(&dest);
        run(&mut command, &format!("building {}", plugin.dir));
        fs::write(&stamp, &inputs)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", stamp.display()));
    }
}

/// `npm ci` of the JavaScript SDK's lock file, unless the installed one is
/// from the same lock file.
fn install_node_modules(workspace: &Path, target_dir: &Path) {
    let root = target_dir.join("polyglot/js");
    let sources = [
        workspace.join("sdk/js/package.json"),
        workspace.join("sdk/js/package-lock.json"),
    ];
    let wanted = hash_files(&sources);
    let stamp = root.join(".installed");
    if root.join("node_modules").is_dir()
        && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted)
    {
        return;
    }
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    for source in &sources {
        let name = source.file_name().expect("a file name");
        fs::copy(source, root.join(name))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", source.display()));
    }
    let mut command = Command::new("npm");
    command
        .current_dir(&root)
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--cache",
        ])
        .arg(target_dir.join("polyglot/npm-cache"));
    run(
        &mut command,
        "installing the JavaScript toolchain (npm ci of sdk/js/package-lock.json)",
    );
    fs::write(&stamp, &wanted).unwrap_or_else(|e| panic!("cannot write {}: {e}", stamp.display()));
}

/// A virtualenv with `sdk/python/requirements.txt`, unless the installed
/// one is from the same file.
fn install_python(workspace: &Path, target_dir: &Path, python: &Path) {
    let venv = target_dir.join("polyglot/venv");
    let requirements = workspace.join("sdk/python/requirements.txt");
    let wanted = hash_files(std::slice::from_ref(&requirements));
    let stamp = venv.join(".installed");
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) {
        return;
    }
    if !python.is_file() {
        let mut command = Command::new("python3");
        command.args(["-m", "venv"]).arg(&venv);
        run(
            &mut command,
            "creating the Python virtualenv (python3 -m venv)",
        );
    }
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--cache-dir")
        .arg(target_dir.join("polyglot/pip-cache"))
        .arg("-r")
        .arg(&requirements);
    run(
        &mut command,
        "installing the Python toolchain (pip install -r sdk/python/requirements.txt)",
    );
    fs::write(&stamp, &wanted).unwrap_or_else(|e| panic!("cannot write {}: {e}", stamp.display()));
}

/// What a component is built from: its own files, its language's SDK, the
/// WIT, and the installed toolchain (by its lock file).
fn inputs_hash(workspace: &Path, plugin: &PolyglotPlugin, tools: &Toolchains) -> String {
    let mut files = Vec::new();
    collect_files(&workspace.join(plugin.dir), &mut files);
    collect_files(&workspace.join("wit"), &mut files);
    match plugin.language {
        Language::JavaScript => {
            collect_files(&workspace.join("sdk/js"), &mut files);
        }
        Language::Python => {
            collect_files(&workspace.join("sdk/python"), &mut files);
        }
    }
    files.sort();
    let mut hash = hash_files(&files);
    hash.push_str(plugin.world);
    hash.push_str(&format!("{}", tools.python.display()));
    hash
}

/// Source files under `dir`, skipping tests' caches and installs.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "node_modules" || name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// A hash of the paths and contents of `files`, as hex. Not a content
/// address, only a stamp compared with itself on this machine.
fn hash_files(files: &[PathBuf]) -> String {
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        fs::read(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
            .hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({status}).\ncommand: {command:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            status = output.status,
            stdout = String::from_utf8_lossy(&output.stdout),
            stderr = String::from_utf8_lossy(&output.stderr),
        );
    }
}
