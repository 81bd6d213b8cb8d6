//! The SDKs' templates (`sdk/rust/template`, `sdk/js/template`,
//! `sdk/python/template`) as a plugin author outside this repository uses
//! them: each is copied to a temporary directory outside the workspace,
//! pointed at this checkout's SDK, built into a component, and tested with
//! its language's own runner; the component then serves commands in a host.
//!
//! To keep the runtime reasonable, the Rust build shares a target directory
//! (`<target>/template-build`, so a second run is incremental) and the
//! template gets the workspace's `Cargo.lock` (no registry look-up); the
//! JavaScript template's `node_modules` is made of links to what
//! `npm install` would put there (the SDK, and the SDK's toolchain from the
//! install the polyglot tests share); the Python template runs with the
//! shared virtualenv and the SDK on `PYTHONPATH`, which stands in for
//! `pip install -e <kiln>/sdk/python[build,test]`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::common::{TestHost, artifacts, cmd};

/// The repository root (this crate is `tests/`).
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

/// A copy of `sdk/<sdk>/template` in a temporary directory outside the
/// workspace.
fn copy_template(sdk: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kiln-template-")
        .tempdir()
        .expect("temp dir");
    assert!(
        !dir.path().starts_with(workspace()),
        "{} is inside the workspace",
        dir.path().display()
    );
    copy_dir(
        &workspace().join("sdk").join(sdk).join("template"),
        dir.path(),
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read template") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if ["target", "node_modules", "__pycache__", ".venv"]
            .iter()
            .any(|skip| name == *skip)
        {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

/// Replace `from` (which must be there) with `to` in the file at `path`.
fn point_at_checkout(path: &Path, from: &str, to: &Path) {
    let text = fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no {from}", path.display());
    let to = to.to_str().expect("a UTF-8 path");
    fs::write(path, text.replace(from, to)).expect("write");
}

/// Run `command` in `dir`; fail with its output when it fails.
fn run(mut command: Command, dir: &Path, what: &str) {
    command.current_dir(dir).env("PYTHONDONTWRITEBYTECODE", "1");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A component's preamble (magic, version 0x0d, layer 1), and a size below
/// `max_bytes`; its bytes.
fn assert_component(path: &Path, max_bytes: usize) -> Vec<u8> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes.get(..8),
        Some(&b"\0asm\x0d\0\x01\0"[..]),
        "{} is not a component",
        path.display()
    );
    assert!(
        bytes.len() < max_bytes,
        "{} is {} bytes, more than {max_bytes}",
        path.display(),
        bytes.len()
    );
    bytes
}

/// The template's counter, loaded as `counter`, counts and refuses to go
/// above 10 with the code `limit`.
async fn serves_the_counter(component: &Path) {
    let component = component.to_str().expect("a UTF-8 path");
    let mut h = TestHost::start_polyglot(&[(component, "counter")]).await;
    let ok = h
        .command("counter", "1", cmd("Increment", json!({"by": 4})))
        .await;
    ok.expect(200, "");
    assert_eq!(ok.body["version"], 1, "{}", ok.body);
    let refused = h
        .command("counter", "1", cmd("Increment", json!({"by": 7})))
        .await;
    refused.expect(422, "rejected");
    assert!(
        refused.body.to_string().contains("limit"),
        "the rejection carries its code: {}",
        refused.body
    );
    h.command("counter", "1", cmd("Increment", json!({"by": 0})))
        .await
        .expect(400, "invalid_command");
    h.stop().await;
}

/// A cargo command with none of the outer `cargo test`'s build settings.
fn cargo(target_dir: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for name in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
    ] {
        command.env_remove(name);
    }
    command.env("CARGO_TARGET_DIR", target_dir);
    command
}

/// The Rust template: `cargo build --profile plugin --target wasm32-wasip2`
/// gives a small component (its `plugin` profile and `.cargo/config.toml`),
/// `cargo test` runs its given/when/then tests.
#[tokio::test]
async fn the_rust_template_builds_a_small_component_outside_the_workspace() {
    let dir = copy_template("rust");
    point_at_checkout(
        &dir.path().join("Cargo.toml"),
        "../kiln/sdk/rust",
        &workspace().join("sdk/rust"),
    );
    fs::copy(
        workspace().join("Cargo.lock"),
        dir.path().join("Cargo.lock"),
    )
    .expect("lock file");
    let target_dir = PathBuf::from(artifacts::TARGET_DIR).join("template-build");
    let mut build = cargo(&target_dir);
    build.args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"]);
    run(build, dir.path(), "cargo build (the Rust template)");
    let component = target_dir.join("wasm32-wasip2/plugin/counter.wasm");
    // ~50 kB with the template's profile; the "too large" was 2.7 MB.
    assert_component(&component, 400 * 1024);
    let mut test = cargo(&target_dir);
    test.args(["test", "--quiet"]);
    run(test, dir.path(), "cargo test (the Rust template)");
    serves_the_counter(&component).await;
}

/// The JavaScript template: `npm run build` (the SDK's `kiln-js-build`)
/// and `npm test` (node's test runner), importing the SDK by its name.
#[tokio::test]
async fn the_javascript_template_builds_and_tests_outside_the_workspace() {
    let dir = copy_template("js");
    let sdk = workspace().join("sdk/js");
    point_at_checkout(&dir.path().join("package.json"), "../kiln/sdk/js", &sdk);
    // What `npm install` makes of the `file:` dependency: a link to the SDK,
    // its toolchain beside it, and the SDK's `bin` in `.bin`.
    let modules = dir.path().join("node_modules");
    fs::create_dir_all(modules.join(".bin")).expect("node_modules");
    symlink(&sdk, &modules.join("kiln-sdk"));
    symlink(&sdk.join("build.mjs"), &modules.join(".bin/kiln-js-build"));
    let toolchain = artifacts::polyglot::node_modules().expect("the JavaScript toolchain");
    for entry in fs::read_dir(toolchain).expect("read node_modules") {
        let entry = entry.expect("entry");
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        symlink(&entry.path(), &modules.join(entry.file_name()));
    }
    let mut build = Command::new("npm");
    build.args(["run", "--silent", "build"]);
    run(build, dir.path(), "npm run build (the JavaScript template)");
    let mut test = Command::new("npm");
    test.args(["test", "--silent"]);
    run(test, dir.path(), "npm test (the JavaScript template)");
    let component = dir.path().join("counter.wasm");
    assert_component(&component, 64 * 1024 * 1024);
    serves_the_counter(&component).await;
}

/// The Python template: `python -m kiln_sdk.build` and `python -m pytest`
/// in its folder, with its `pyproject.toml`.
#[tokio::test]
async fn the_python_template_builds_and_tests_outside_the_workspace() {
    let dir = copy_template("python");
    let python = artifacts::polyglot::python().expect("the Python toolchain");
    let sdk = workspace().join("sdk/python");
    let mut build = Command::new(python);
    build
        .args([
            "-m",
            "kiln_sdk.build",
            "--world",
            "aggregate",
            "--app",
            "app",
        ])
        .args(["--path", ".", "--out", "counter.wasm"])
        .env("PYTHONPATH", &sdk);
    run(build, dir.path(), "kiln_sdk.build (the Python template)");
    let mut test = Command::new(python);
    test.args(["-m", "pytest", "-q"]).env("PYTHONPATH", &sdk);
    run(test, dir.path(), "pytest (the Python template)");
    let component = dir.path().join("counter.wasm");
    assert_component(&component, 64 * 1024 * 1024);
    serves_the_counter(&component).await;
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("link {} -> {}: {e}", link.display(), target.display()));
}
