//! Builds the Rust example and fixture plugins of `plugins/` into
//! wasm32-wasip2 components and generates the code naming them (see
//! `src/lib.rs`). It needs Rust only: the JavaScript and Python plugins are
//! listed here (for `foreach_fixture!` and their paths) but built by the
//! library when a test first asks for one (`src/polyglot.rs`).
//!
//! Which crates are plugins is read from the workspace, never listed here:
//! `cargo metadata` gives every member, and a member with
//! `[package.metadata.kiln] kind = "example"` or `"fixture"` is a plugin
//! (`build/members.rs`). The JavaScript and Python plugins are the
//! directories of `plugins/` and `plugins/fixtures/` whose `package.json`
//! has a `kiln` object or whose `pyproject.toml` has a `[tool.kiln]` table
//! (`build/polyglot.rs`).
//!
//! A nested `cargo build --profile plugin --target wasm32-wasip2` runs from
//! the workspace root with a target directory of its own
//! (`<target>/wasm-build`), so it never waits on the lock of the outer build;
//! a plugin that depends on another plugin crate gets a nested build and a
//! target directory of its own (`<target>/wasm-build-<package>`, see
//! [`members::Plugin::alone`]). The components are then copied to
//! `<target>/plugins/` (examples) and `<target>/plugins/fixtures/`
//! (fixtures), the directories the host and the README point at.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/generate.rs"]
mod generate;
#[path = "build/members.rs"]
mod members;
#[path = "build/polyglot.rs"]
mod polyglot;

const WASM_TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// Variables the outer build sets (or a developer sets for the host) that
/// must not change how the plugins are built. The jobserver variables
/// (`CARGO_MAKEFLAGS`, `MAKEFLAGS`, `MFLAGS`) are kept on purpose, so that the
/// nested build shares the outer build's job slots.
const LEAKING_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PKG_NAME",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "CARGO_LLVM_COV",
    "CARGO_LLVM_COV_TARGET_DIR",
    "LLVM_PROFILE_FILE",
];

/// Where things go, all under the target directory.
pub struct Layout {
    pub workspace: PathBuf,
    pub target_dir: PathBuf,
    /// `<target>/plugins`.
    pub examples_dir: PathBuf,
    /// `<target>/plugins/fixtures`.
    pub fixtures_dir: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    // host/artifacts → workspace root.
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("host/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let target_dir = target_dir(&workspace);
    let examples_dir = target_dir.join("plugins");
    let layout = Layout {
        fixtures_dir: examples_dir.join("fixtures"),
        examples_dir,
        target_dir,
        workspace,
    };

    for path in [
        "plugins",
        "sdk/rust",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            layout.workspace.join(path).display()
        );
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let plugins = members::plugins(&layout.workspace);
    let polyglot = polyglot::plugins(&layout.workspace);
    ensure_wasm_target();
    let wasm_build_dir = layout.target_dir.join("wasm-build");
    let together: Vec<&str> = plugins
        .iter()
        .filter(|plugin| !plugin.alone)
        .map(|plugin| plugin.package.as_str())
        .collect();
    build_plugins(&layout.workspace, &wasm_build_dir, &together);
    for plugin in plugins.iter().filter(|plugin| plugin.alone) {
        build_plugins(
            &layout.workspace,
            &alone_build_dir(&layout.target_dir, &plugin.package),
            &[plugin.package.as_str()],
        );
    }

    fs::create_dir_all(&layout.fixtures_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", layout.fixtures_dir.display()));
    let mut components = Vec::new();
    for plugin in &plugins {
        let build_dir = if plugin.alone {
            alone_build_dir(&layout.target_dir, &plugin.package)
        } else {
            wasm_build_dir.clone()
        };
        let built = build_dir
            .join(WASM_TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", plugin.package));
        let dir = match plugin.kind {
            members::Kind::Example => &layout.examples_dir,
            members::Kind::Fixture => &layout.fixtures_dir,
        };
        let dest = dir.join(format!("{}.wasm", plugin.package));
        copy_if_changed(&built, &dest);
        components.push(dest);
    }

    let generated = generate::code(&layout, &plugins, &components, &polyglot);
    let out = PathBuf::from(env_var("OUT_DIR")).join("plugins.rs");
    fs::write(&out, generated).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

fn env_var(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root when relative), else
/// `<workspace>/target`.
fn target_dir(workspace: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

/// A cargo command run from the workspace root with none of the outer
/// build's settings (see [`LEAKING_ENV`]).
pub fn nested_cargo(workspace: &Path) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace);
    for name in LEAKING_ENV {
        command.env_remove(name);
    }
    // Cargo's per-package build-script variables and `cfg`s of the outer build.
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_CFG_")
            || name.starts_with("CARGO_FEATURE_")
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("DEP_")
        {
            command.env_remove(name);
        }
    }
    command
}

fn rustc() -> Command {
    Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
}

/// rustup does not add the targets named in `rust-toolchain.toml` when the
/// toolchain is already installed, so add `wasm32-wasip2` here if its standard
/// library is missing.
fn ensure_wasm_target() {
    let output = rustc()
        .args(["--print", "sysroot"])
        .output()
        .expect("cannot run `rustc --print sysroot`");
    assert!(
        output.status.success(),
        "`rustc --print sysroot` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).exists() {
        return;
    }
    println!("cargo:warning=installing the {WASM_TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "`rustup target add {WASM_TARGET}` failed ({status}); the plugins cannot be built \
             without it. Install it by hand (`rustup target add {WASM_TARGET}`) and build again."
        ),
        Err(error) => panic!(
            "the {WASM_TARGET} target is not installed in {} and rustup could not be run \
             ({error}); install the target and build again.",
            sysroot.display()
        ),
    }
}

/// The target directory of a plugin built alone.
fn alone_build_dir(target_dir: &Path, package: &str) -> PathBuf {
    target_dir.join(format!("wasm-build-{package}"))
}

/// Run one nested cargo build of `packages` in `wasm_build_dir`.
fn build_plugins(workspace: &Path, wasm_build_dir: &Path, packages: &[&str]) {
    let mut command = nested_cargo(workspace);
    command
        .args(["build", "--profile", PROFILE, "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(wasm_build_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run the nested cargo build ({command:?}): {e}"));
    if !output.status.success() {
        panic!(
            "building the plugins for {WASM_TARGET} failed ({status}).\n\
             command: {command:?}\n\
             --- stderr ---\n{stderr}",
            status = output.status,
            stderr = String::from_utf8_lossy(&output.stderr),
        );
    }
}

/// Copy `from` to `to` unless `to` already has the same bytes, so that the
/// host's file watcher and caches see a change only when there is one. The
/// copy is written beside `to` and renamed over it, so a reader never sees
/// half a component.
fn copy_if_changed(from: &Path, to: &Path) {
    let bytes = fs::read(from).unwrap_or_else(|e| {
        panic!(
            "the nested build succeeded but {} cannot be read: {e}",
            from.display()
        )
    });
    if fs::read(to).is_ok_and(|existing| existing == bytes) {
        return;
    }
    let partial = to.with_extension("wasm.partial");
    fs::write(&partial, &bytes)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", partial.display()));
    fs::rename(&partial, to).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
}
