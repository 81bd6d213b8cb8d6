//! JavaScript and Python plugins through the host: a throwing plugin fails
//! only its command, the Python projection matches the Rust one row for
//! row, large components compile in the background while the host serves,
//! and the SDKs' native tests (node's test runner, pytest) pass. The
//! bank_account scenarios for every build are in `bank_account.rs`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestHost, artifacts, cmd};

/// The repository root (this crate is `tests/`).
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

/// A plugin that throws (JavaScript) or raises (Python) fails its command
/// with 500 `plugin_trap` carrying the exception's message; the same
/// plugin's next command, and other plugins, work.
async fn an_exception_fails_only_its_command(fixture: &str, expected: &str) {
    let mut h = TestHost::start_polyglot(&[
        (fixture, "thrower"),
        (artifacts::BANK_ACCOUNT, "bank_account"),
    ])
    .await;
    h.command("thrower", "1", cmd("Increment", json!({})))
        .await
        .expect(200, "");
    let r = h
        .command(
            "thrower",
            "1",
            cmd("Explode", json!({"reason": "on purpose"})),
        )
        .await;
    r.expect(500, "plugin_trap");
    assert!(
        r.message().contains(&format!("{expected}: on purpose")),
        "the trap message carries the exception: {}",
        r.body
    );
    // The failed command appended nothing; the plugin and the host go on.
    let again = h.command("thrower", "1", cmd("Increment", json!({}))).await;
    again.expect(200, "");
    assert_eq!(again.body["version"], 2, "{}", again.body);
    h.command("bank_account", "1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    h.stop().await;
}

#[tokio::test]
pub async fn a_javascript_plugin_that_throws_fails_only_its_command() {
    an_exception_fails_only_its_command(artifacts::fixture_throw_js(), "boom from javascript")
        .await;
}

#[tokio::test]
pub async fn a_python_plugin_that_raises_fails_only_its_command() {
    an_exception_fails_only_its_command(artifacts::fixture_raise_py(), "boom from python").await;
}

/// Every row of a projection, by key.
async fn all_rows(h: &TestHost, projection: &str) -> Vec<(String, Value)> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = match &after {
            Some(key) => {
                h.get(&format!(
                    "/projections/{projection}/rows?limit=100&after={key}"
                ))
                .await
            }
            None => {
                h.get(&format!("/projections/{projection}/rows?limit=100"))
                    .await
            }
        };
        page.expect(200, "");
        for row in page.body["rows"].as_array().expect("rows") {
            rows.push((
                row["key"].as_str().expect("key").to_string(),
                row["value"].clone(),
            ));
        }
        match page.body["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return rows,
        }
    }
}

/// Wait until `projection` has processed the log up to `head`.
async fn caught_up(h: &TestHost, projection: &str, head: u64) {
    for _ in 0..3000 {
        let s = h.get(&format!("/projections/{projection}")).await;
        if s.status == 200 && s.body["position"].as_u64() >= Some(head) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{projection} did not reach position {head}");
}

#[tokio::test]
async fn the_python_projection_gives_the_same_rows_as_the_rust_one() {
    let mut h = TestHost::start_polyglot(&[
        (artifacts::BANK_ACCOUNT, "bank_account"),
        (artifacts::ACCOUNT_BALANCES, "account_balances"),
        (artifacts::account_balances_py(), "account_balances_py"),
    ])
    .await;
    // Opens, deposits, withdrawals, a rejected withdrawal (no event), closes.
    for i in 0..12 {
        let id = format!("acc-{i}");
        h.command(
            "bank_account",
            &id,
            cmd(
                "Open",
                json!({"owner": format!("owner {i}"), "overdraft_limit": i * 10}),
            ),
        )
        .await
        .expect(200, "");
        h.command(
            "bank_account",
            &id,
            cmd("Deposit", json!({"amount": 100 + i})),
        )
        .await
        .expect(200, "");
        h.command(
            "bank_account",
            &id,
            cmd("Withdraw", json!({"amount": 30 * i})),
        )
        .await;
        if i % 3 == 0 {
            let balance = h
                .get(&format!("/streams/bank_account-{id}/state"))
                .await
                .body["state"]["balance"]
                .as_i64()
                .expect("balance");
            if balance > 0 {
                h.command(
                    "bank_account",
                    &id,
                    cmd("Withdraw", json!({"amount": balance})),
                )
                .await
                .expect(200, "");
            }
            h.command("bank_account", &id, cmd("Close", json!({})))
                .await;
        }
    }
    let head = h.get("/readyz").await.body["head"].as_u64().expect("head");
    caught_up(&h, "account_balances", head).await;
    caught_up(&h, "account_balances_py", head).await;
    let rust = all_rows(&h, "account_balances").await;
    let python = all_rows(&h, "account_balances_py").await;
    assert!(rust.len() >= 12, "one row per account at least: {rust:?}");
    assert_eq!(rust, python);
    h.stop().await;
}

/// A large component missing from the compile cache does not hold up the
/// start: the host serves at once and `GET /plugins` shows it compiling.
/// A new version uploaded over a loaded plugin compiles while the loaded
/// version keeps serving commands.
#[tokio::test]
async fn large_components_compile_in_the_background_while_the_host_serves() {
    // Built (if need be) before the host starts, so that the build does not
    // run inside the time the test watches.
    let bank_account_py = artifacts::bank_account_py();
    // A compile cache of its own, so that both compiles really happen.
    let mut h = TestHost::start_with_plugins(
        &[
            (artifacts::BANK_ACCOUNT, "bank_account"),
            (artifacts::bank_account_js(), "bank_js"),
            (artifacts::fixture_raise_py(), "raiser"),
        ],
        |_| {},
    )
    .await;
    // Both large ones show as compiling, the one waiting its turn too.
    let list = h.get("/plugins").await;
    for name in ["bank_js", "raiser"] {
        let entry = list
            .body
            .as_array()
            .expect("list")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed while compiling: {}", list.body));
        assert_eq!(entry["status"], "compiling", "{entry}");
        assert!(entry["kind"].is_null());
    }
    let ready = h.get("/readyz").await;
    ready.expect(200, "");
    assert_eq!(
        ready.body["compiling"],
        json!(["bank_js", "raiser"]),
        "{}",
        ready.body
    );
    // The host serves meanwhile.
    h.command("bank_account", "1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    let ready = h.wait_for_plugin("bank_js", Duration::from_secs(300)).await;
    assert_eq!(ready["kind"], "aggregate");
    h.wait_for_plugin("raiser", Duration::from_secs(300)).await;
    assert_eq!(h.get("/readyz").await.body["compiling"], json!([]));
    h.command("bank_js", "1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");

    // A new version of bank_account (the Python build) while the Rust one serves.
    let rust_hash = h
        .wait_for_plugin("bank_account", Duration::from_secs(5))
        .await["hash"]
        .clone();
    let bytes = std::fs::read(bank_account_py).expect("component");
    let upload = h
        .client
        .put(h.url("/plugins/bank_account"))
        .bearer_auth(crate::common::ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(bytes)
        // The upload answers once the component is compiled: on a loaded
        // machine that takes well over the client's usual 30 s. The test
        // waits for that state, not for a time.
        .timeout(Duration::from_secs(900))
        .send();
    let upload = tokio::spawn(upload);
    let mut seen_compiling = false;
    for _ in 0..600 {
        let list = h.get("/plugins").await;
        let entry = list
            .body
            .as_array()
            .expect("list")
            .iter()
            .find(|p| p["name"] == "bank_account")
            .cloned()
            .expect("listed");
        if !entry["compiling"].is_null() {
            assert_eq!(entry["status"], "ready");
            assert_eq!(entry["hash"], rust_hash, "the loaded version is listed");
            assert_ne!(entry["compiling"]["hash"], rust_hash);
            seen_compiling = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_compiling, "the new version was never shown compiling");
    h.command("bank_account", "1", cmd("Deposit", json!({"amount": 5})))
        .await
        .expect(200, "");
    let response = upload.await.expect("upload task").expect("upload");
    assert_eq!(response.status().as_u16(), 200);
    let now = h
        .wait_for_plugin("bank_account", Duration::from_secs(5))
        .await;
    assert_ne!(now["hash"], rust_hash, "the new version is current");
    // The Python build folds the stream the Rust build wrote.
    let s = h.get("/streams/bank_account-1/state").await;
    assert_eq!(s.body["state"]["balance"], 5, "{}", s.body);
    h.command("bank_account", "1", cmd("Withdraw", json!({"amount": 5})))
        .await
        .expect(200, "");
    h.stop().await;
}

/// Run a command of a language's toolchain in `dir`; fail with its output
/// when it fails.
fn run_native(mut command: Command, dir: &Path, what: &str) {
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

/// The plugins of `plugins/` in `language`, from their manifests.
fn plugins_of(language: artifacts::polyglot::Language) -> Vec<&'static Path> {
    let dirs: Vec<&'static Path> = artifacts::POLYGLOT_PLUGINS
        .iter()
        .filter(|plugin| plugin.language == language)
        .map(|plugin| Path::new(plugin.dir))
        .collect();
    assert!(!dirs.is_empty(), "no {language} plugin found");
    dirs
}

/// The JavaScript SDK's and plugins' own tests, with node's test runner,
/// each in its own folder as its author runs them (`npm test`). A plugin
/// imports the SDK by its name, through `node_modules/kiln-sdk`.
#[test]
fn javascript_native_tests_pass() {
    let mut node = Command::new("node");
    node.args(["--test", "test/"]);
    run_native(node, &workspace().join("sdk/js"), "node --test (sdk/js)");
    for dir in plugins_of(artifacts::polyglot::Language::JavaScript) {
        artifacts::polyglot::link_js_sdk(dir).expect("link the SDK");
        let mut node = Command::new("node");
        node.args(["--test", "test/"]);
        run_native(node, dir, &format!("node --test ({})", dir.display()));
    }
}

/// The Python SDK's and plugins' own tests, with pytest from the
/// toolchain's virtualenv, each in its own folder with its own
/// `pyproject.toml`; the SDK on `PYTHONPATH` stands in for an editable
/// install (`pip install -e sdk/python`).
#[test]
fn python_native_tests_pass() {
    let python = artifacts::polyglot::python().expect("the Python toolchain");
    let sdk = workspace().join("sdk/python");
    let mut dirs = vec![sdk.as_path()];
    dirs.extend(plugins_of(artifacts::polyglot::Language::Python));
    for dir in dirs {
        let mut pytest = Command::new(python);
        pytest.args(["-m", "pytest", "-q"]).env("PYTHONPATH", &sdk);
        run_native(pytest, dir, &format!("pytest ({})", dir.display()));
    }
}
