//! Builds the example and fixture plugins in `plugins/` into wasm32-wasip2
//! components and generates constants naming them (see `src/lib.rs`).
//!
//! A nested `cargo build --profile plugin --target wasm32-wasip2` runs from
//! the workspace root with a target directory of its own
//! (`<target>/wasm-build`), so it never waits on the lock of the outer build;
//! the few plugins of `BUILT_ALONE` get a nested build and a target directory
//! each (`<target>/wasm-build-<package>`). The components are then copied to `<target>/plugins/` (examples) and
//! `<target>/plugins/fixtures/` (fixtures), the directories the host and the
//! README point at.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/polyglot.rs"]
mod polyglot;

const WASM_TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// A plugin crate: its package name is the component's file stem, which is
/// also the plugin name the host uses. (Library crates the plugins share,
/// such as `account_balances_core`, are not listed: they are not
/// components.)
struct Plugin {
    package: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Well-behaved example plugins, copied to `<target>/plugins/`.
    Example,
    /// Misbehaving plugins for the host's tests, copied to
    /// `<target>/plugins/fixtures/`.
    Fixture,
}

/// Every plugin to build. A new fixture added here appears in
/// `foreach_fixture!`, so the host's test module that calls it fails to
/// compile until the fixture has a test.
const PLUGINS: &[Plugin] = &[
    Plugin {
        package: "bank_account",
        kind: Kind::Example,
    },
    Plugin {
        package: "workflow_execution",
        kind: Kind::Example,
    },
    Plugin {
        package: "account_balances",
        kind: Kind::Example,
    },
    Plugin {
        package: "executions_by_status",
        kind: Kind::Example,
    },
    Plugin {
        package: "fixture_panic",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_spin",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_oom",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_oversize",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_snoop",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_no_world",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_poison",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_balances_v2",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "transfer",
        kind: Kind::Example,
    },
    Plugin {
        package: "transfer_saga",
        kind: Kind::Example,
    },
    Plugin {
        package: "fixture_three_steps",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_flaky_bank",
        kind: Kind::Fixture,
    },
    Plugin {
        package: "fixture_saga_trap",
        kind: Kind::Fixture,
    },
];

/// Plugins of [`PLUGINS`] built by a nested cargo build of their own, in a
/// target directory of their own (`<target>/wasm-build-<package>`).
///
/// Cargo unifies the features of every package one build selects: a plugin
/// that depends on another plugin crate without that crate's exports
/// (`default-features = false`, as `fixture_flaky_bank` depends on
/// `bank_account`) would get them anyway when that crate is built beside it,
/// and its component would not link ("duplicate symbol: handle"). A target
/// directory of its own also keeps the dependency's export-less component
/// from overwriting the real one: a component's file name has no hash.
const BUILT_ALONE: &[&str] = &["fixture_flaky_bank"];

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

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    // host/artifacts → workspace root.
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("host/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let target_dir = target_dir(&workspace);
    let wasm_build_dir = target_dir.join("wasm-build");
    let examples_dir = target_dir.join("plugins");
    let fixtures_dir = examples_dir.join("fixtures");

    for path in [
        "plugins",
        "sdk/rust",
        "sdk/js",
        "sdk/python",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    ensure_wasm_target();
    for package in BUILT_ALONE {
        assert!(
            PLUGINS.iter().any(|plugin| plugin.package == *package),
            "{package} is built alone but is not in PLUGINS"
        );
    }
    let together: Vec<&str> = PLUGINS
        .iter()
        .map(|plugin| plugin.package)
        .filter(|package| !BUILT_ALONE.contains(package))
        .collect();
    // The JavaScript and Python plugins build beside the Rust ones: their
    // toolchains' installs mostly wait on the network.
    std::thread::scope(|scope| {
        let polyglot = scope.spawn(|| polyglot::build_all(&workspace, &target_dir, &examples_dir));
        build_plugins(&workspace, &wasm_build_dir, &together);
        for package in BUILT_ALONE {
            build_plugins(
                &workspace,
                &alone_build_dir(&target_dir, package),
                &[package],
            );
        }
        if let Err(panic) = polyglot.join() {
            std::panic::resume_unwind(panic);
        }
    });

    fs::create_dir_all(&fixtures_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", fixtures_dir.display()));
    let mut generated = String::new();
    writeln!(
        generated,
        "/// The directory holding the example components, `<target>/plugins`.\n\
         pub const EXAMPLES_DIR: &str = {:?};\n\
         /// The directory holding the fixture components, `<target>/plugins/fixtures`.\n\
         pub const FIXTURES_DIR: &str = {:?};",
        path_str(&examples_dir),
        path_str(&fixtures_dir),
    )
    .expect("writing to a String cannot fail");

    for plugin in PLUGINS {
        let build_dir = if BUILT_ALONE.contains(&plugin.package) {
            alone_build_dir(&target_dir, plugin.package)
        } else {
            wasm_build_dir.clone()
        };
        let built = build_dir
            .join(WASM_TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", plugin.package));
        let dir = match plugin.kind {
            Kind::Example => &examples_dir,
            Kind::Fixture => &fixtures_dir,
        };
        let dest = dir.join(format!("{}.wasm", plugin.package));
        copy_if_changed(&built, &dest);
        writeln!(
            generated,
            "/// The component built from the `{package}` crate.\n\
             pub const {name}: &str = {path:?};",
            package = plugin.package,
            name = plugin.package.to_uppercase(),
            path = path_str(&dest),
        )
        .expect("writing to a String cannot fail");
    }

    let tools = polyglot::Toolchains::new(&target_dir);
    writeln!(
        generated,
        "/// The JavaScript examples (`bank_account`), `<target>/plugins/javascript`.\n\
         pub const JAVASCRIPT_DIR: &str = {:?};\n\
         /// The Python examples (`bank_account`, `account_balances`), `<target>/plugins/python`.\n\
         pub const PYTHON_DIR: &str = {:?};\n\
         /// The virtualenv's Python, with componentize-py and pytest.\n\
         pub const PYTHON: &str = {:?};\n\
         /// The JavaScript toolchain's `node_modules`.\n\
         pub const NODE_MODULES: &str = {:?};",
        path_str(&examples_dir.join("javascript")),
        path_str(&examples_dir.join("python")),
        path_str(&tools.python),
        path_str(&tools.node_modules),
    )
    .expect("writing to a String cannot fail");
    for plugin in polyglot::POLYGLOT_PLUGINS {
        writeln!(
            generated,
            "/// The component built from `{dir}` ({world}).\n\
             pub const {name}: &str = {path:?};",
            dir = plugin.dir,
            world = plugin.world,
            name = plugin.constant,
            path = path_str(&polyglot::component_path(&examples_dir, plugin)),
        )
        .expect("writing to a String cannot fail");
    }

    for (kind, macro_name) in [
        (Kind::Example, "foreach_example"),
        (Kind::Fixture, "foreach_fixture"),
    ] {
        writeln!(
            generated,
            "/// Calls `$mac!(name)` once for every {noun}, `name` being its crate name.\n\
             #[macro_export]\n\
             macro_rules! {macro_name} {{\n    ($mac:ident) => {{",
            noun = if kind == Kind::Example {
                "example plugin"
            } else {
                "fixture"
            },
        )
        .expect("writing to a String cannot fail");
        for plugin in PLUGINS.iter().filter(|p| p.kind == kind) {
            writeln!(generated, "        $mac!({});", plugin.package)
                .expect("writing to a String cannot fail");
        }
        if kind == Kind::Fixture {
            for plugin in polyglot::POLYGLOT_PLUGINS.iter().filter(|p| p.fixture) {
                writeln!(generated, "        $mac!({});", plugin.file_stem)
                    .expect("writing to a String cannot fail");
            }
        }
        generated.push_str("    };\n}\n");
    }

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

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("the path {} is not UTF-8", path.display()))
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

/// The target directory of a plugin of [`BUILT_ALONE`].
fn alone_build_dir(target_dir: &Path, package: &str) -> PathBuf {
    target_dir.join(format!("wasm-build-{package}"))
}

/// Run one nested cargo build of `packages` in `wasm_build_dir`.
fn build_plugins(workspace: &Path, wasm_build_dir: &Path, packages: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--profile", PROFILE, "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(wasm_build_dir);
    for package in packages {
        command.args(["-p", package]);
    }
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
