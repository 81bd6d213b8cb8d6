//! The workflow execution state machine, over HTTP.

use serde_json::json;

use crate::common::{TestHost, cmd};

const AGG: &str = "workflow_execution";

/// A command, its data, the event it gives and the status after it.
type Step = (&'static str, serde_json::Value, &'static str, &'static str);

async fn status(h: &TestHost, id: &str) -> String {
    let s = h.get(&format!("/streams/{AGG}-{id}/state")).await;
    s.expect(200, "");
    s.body["state"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn legal_paths_reach_every_end_state() {
    let mut h = TestHost::start().await;
    let paths: &[(&str, &[Step])] = &[
        (
            "w1",
            &[
                ("Start", json!({}), "Started", "RUNNING"),
                ("Finish", json!({}), "Finished", "COMPLETED"),
            ],
        ),
        (
            "w2",
            &[
                ("Start", json!({}), "Started", "RUNNING"),
                ("Fail", json!({"error": "disk full"}), "Failed", "FAILED"),
            ],
        ),
        (
            "w3",
            &[
                ("Start", json!({}), "Started", "RUNNING"),
                ("Pause", json!({}), "Paused", "PAUSED"),
                ("Resume", json!({}), "Resumed", "RUNNING"),
                ("Interrupt", json!({}), "Interrupted", "INTERRUPTED"),
                ("Retry", json!({}), "Retried", "RUNNING"),
                ("Pause", json!({}), "Paused", "PAUSED"),
                ("Cancel", json!({}), "Cancelled", "CANCELLED"),
            ],
        ),
    ];
    for (id, steps) in paths {
        for (command, data, event, after) in steps.iter() {
            let r = h.command(AGG, id, cmd(command, data.clone())).await;
            r.expect(200, "");
            assert_eq!(r.body["events"][0]["type"], *event, "{id} {command}");
            assert_eq!(status(&h, id).await, *after, "{id} after {command}");
        }
    }
    let failed = h.get(&format!("/streams/{AGG}-w2/state")).await;
    assert_eq!(failed.body["state"]["error"], "disk full");
    h.stop().await;
}

#[tokio::test]
async fn illegal_transitions_name_status_and_command() {
    let mut h = TestHost::start().await;
    // NOT_STARTED accepts only Start.
    for command in ["Pause", "Resume", "Finish", "Interrupt", "Retry", "Cancel"] {
        let r = h.command(AGG, "x1", cmd(command, json!({}))).await;
        r.expect(422, "rejected");
        assert!(
            r.message().contains("NOT_STARTED") && r.message().contains(command),
            "{}",
            r.body
        );
    }
    let r = h
        .command(AGG, "x1", cmd("Fail", json!({"error": "e"})))
        .await;
    r.expect(422, "rejected");
    h.command(AGG, "x1", cmd("Start", json!({})))
        .await
        .expect(200, "");
    // RUNNING refuses Start, Resume, Retry, Cancel.
    for command in ["Start", "Resume", "Retry", "Cancel"] {
        let r = h.command(AGG, "x1", cmd(command, json!({}))).await;
        r.expect(422, "rejected");
        assert!(
            r.message().contains("RUNNING") && r.message().contains(command),
            "{}",
            r.body
        );
    }
    h.command(AGG, "x1", cmd("Finish", json!({})))
        .await
        .expect(200, "");
    // COMPLETED is final.
    for command in [
        "Start",
        "Pause",
        "Resume",
        "Finish",
        "Interrupt",
        "Retry",
        "Cancel",
    ] {
        let r = h.command(AGG, "x1", cmd(command, json!({}))).await;
        r.expect(422, "rejected");
        assert!(r.message().contains("COMPLETED"), "{}", r.body);
    }
    // A Fail without its error is invalid input, not a rule.
    h.command(AGG, "x2", cmd("Start", json!({})))
        .await
        .expect(200, "");
    h.command(AGG, "x2", cmd("Fail", json!({})))
        .await
        .expect(400, "invalid_command");
    h.stop().await;
}
