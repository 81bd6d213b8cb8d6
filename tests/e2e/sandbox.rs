//! Misbehaving plugins fail their own command, with the documented status
//! and a clear message, within the limit, and the host goes on.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TEST_COMMAND_TIMEOUT_MS, TestHost, artifacts, cmd};

/// Every fixture has a test in this module (compile-time check).
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports, reason = "the import only checks that the test exists")]
        use self::$name as _;
    };
}
kiln_plugin_artifacts::foreach_fixture!(assert_test_exists);

// The saga fixtures are tested with the sagas.
#[allow(unused_imports, reason = "the import only names the fixture's test")]
use crate::sagas::{
    a_trapping_saga_fails_alone_until_skipped as fixture_saga_trap,
    compensation_that_keeps_failing_is_dead_lettered_then_retried as fixture_flaky_bank,
    three_steps_are_compensated_in_reverse_order as fixture_three_steps,
};

// The JavaScript and Python fixtures are tested with the other polyglot plugins.
#[allow(unused_imports, reason = "the import only names the fixture's test")]
use crate::polyglot::{
    a_javascript_plugin_that_throws_fails_only_its_command as fixture_throw_js,
    a_python_plugin_that_raises_fails_only_its_command as fixture_raise_py,
};

// The projection fixtures are tested with the other projections.
#[allow(unused_imports, reason = "the import only names the fixture's test")]
use crate::projections::{
    a_poison_event_stops_only_its_projection_until_skipped as fixture_poison,
    shadow_deploy_diffs_exactly_the_changed_keys_then_promotes as fixture_balances_v2,
};

/// The host still serves a normal command right after a failure.
async fn host_goes_on(h: &TestHost, id: &str) {
    h.command("bank_account", id, cmd("Open", json!({"owner": "after"})))
        .await
        .expect(200, "");
}

#[tokio::test]
async fn fixture_panic() {
    let mut h = TestHost::start().await;
    let r = h
        .command("fixture_panic", "1", cmd("Anything", json!({})))
        .await;
    r.expect(500, "plugin_trap");
    assert!(
        r.message().contains("deliberate panic"),
        "the panic message reaches the client: {}",
        r.body
    );
    assert!(r.message().contains("fixture_panic"), "{}", r.body);
    host_goes_on(&h, "p1").await;
    // And the same plugin fails the same way again: no poisoned state.
    h.command("fixture_panic", "1", cmd("Anything", json!({})))
        .await
        .expect(500, "plugin_trap");
    h.stop().await;
}

#[tokio::test]
async fn fixture_spin() {
    let mut h = TestHost::start().await;
    let started = Instant::now();
    let r = h.command("fixture_spin", "1", cmd("Spin", json!({}))).await;
    let took = started.elapsed();
    r.expect(503, "plugin_timeout");
    assert!(r.message().contains("time limit"), "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["limit_ms"],
        TEST_COMMAND_TIMEOUT_MS
    );
    assert!(
        took >= Duration::from_millis(TEST_COMMAND_TIMEOUT_MS)
            && took < Duration::from_millis(TEST_COMMAND_TIMEOUT_MS * 6),
        "stopped near its limit, took {took:?}"
    );
    host_goes_on(&h, "s1").await;
    h.stop().await;
}

/// A plugin burning its whole time budget does not stall other commands
/// meanwhile: wasm yields at every epoch tick. The test runtime has one
/// thread, so a call that held it would block the second command until the
/// first timed out.
#[tokio::test]
async fn a_spinning_plugin_does_not_stall_other_commands() {
    let h = std::sync::Arc::new(TestHost::start().await);
    let spinner = {
        let h = h.clone();
        tokio::spawn(async move { h.command("fixture_spin", "2", cmd("Spin", json!({}))).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    h.command(
        "bank_account",
        "during-spin",
        cmd("Open", json!({"owner": "x"})),
    )
    .await
    .expect(200, "");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(TEST_COMMAND_TIMEOUT_MS / 2),
        "a command waited {took:?} behind a spinning plugin"
    );
    spinner.await.unwrap().expect(503, "plugin_timeout");
    let Ok(mut h) = std::sync::Arc::try_unwrap(h) else {
        panic!("host still shared")
    };
    h.stop().await;
}

#[tokio::test]
async fn fixture_oom() {
    let mut h = TestHost::start_with(|c| c.limits.memory_bytes_max = 16 * 1024 * 1024).await;
    let r = h.command("fixture_oom", "1", cmd("Grow", json!({}))).await;
    r.expect(500, "plugin_trap");
    assert!(r.message().contains("memory limit"), "{}", r.body);
    assert_eq!(r.body["error"]["details"]["limit_bytes"], 16 * 1024 * 1024);
    host_goes_on(&h, "o1").await;
    h.stop().await;
}

#[tokio::test]
async fn fixture_oversize() {
    let mut h = TestHost::start().await;
    let r = h
        .command("fixture_oversize", "1", cmd("Big", json!({})))
        .await;
    r.expect(413, "too_large");
    assert_eq!(r.body["error"]["details"]["limit"], 64 * 1024);
    // Nothing was appended.
    h.get("/streams/fixture_oversize-1/events")
        .await
        .expect(404, "not_found");
    host_goes_on(&h, "v1").await;
    h.stop().await;
}

#[tokio::test]
async fn fixture_snoop() {
    let mut h = TestHost::start().await;
    // SAFETY of the check: the host process itself has both.
    assert!(std::path::Path::new("/etc/passwd").exists());
    let r = h
        .command("fixture_snoop", "1", cmd("Snoop", json!({})))
        .await;
    r.expect(200, "");
    let seen = &r.body["events"][0]["data"];
    assert_eq!(r.body["events"][0]["type"], "Snooped");
    assert!(seen["file"].is_null(), "the plugin read a file: {seen}");
    assert!(
        seen["file_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{seen}"
    );
    assert!(
        seen["dir_entries"].is_null(),
        "the plugin listed a directory: {seen}"
    );
    assert!(seen["env_home"].is_null(), "the plugin saw HOME: {seen}");
    assert_eq!(seen["env_count"], 0, "{seen}");
    assert_eq!(seen["args_count"], 0, "{seen}");
    h.stop().await;
}

#[tokio::test]
async fn fixture_no_world() {
    let mut h = TestHost::start().await;
    let bytes = std::fs::read(artifacts::FIXTURE_NO_WORLD).unwrap();
    let r = h.deploy("fixture_no_world", bytes).await;
    r.expect(422, "invalid_plugin");
    let m = r.message();
    assert!(m.contains("fits no Kiln plugin world"), "{m}");
    assert!(m.contains("wasi:cli/run"), "names what it exports: {m}");
    assert!(
        m.contains("`apply`") && m.contains("`handle`"),
        "names what is missing: {m}"
    );
    h.get("/plugins")
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .for_each(|p| assert_ne!(p["name"], "fixture_no_world"));
    host_goes_on(&h, "n1").await;
    h.stop().await;
}
