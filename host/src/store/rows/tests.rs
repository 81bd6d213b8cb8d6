use super::*;

fn command_row(errors: &str) -> CommandRow {
    CommandRow {
        saga: "transfer".into(),
        instance: "t-1".into(),
        step: 2,
        aggregate: "account".into(),
        aggregate_id: "acc-1".into(),
        command_type: "Withdraw".into(),
        data: "{}".into(),
        metadata: "{}".into(),
        compensating: true,
        attempts: 3,
        errors: errors.into(),
        created_at: 17,
        idempotency_key: "k".into(),
    }
}

fn instance_row(status: &str) -> InstanceRow {
    InstanceRow {
        saga: "transfer".into(),
        instance: "t-1".into(),
        state: vec![1, 2],
        status: status.into(),
        done: false,
        next_step: 4,
        awaited_position: 9,
        created_at: 1,
        updated_at: 2,
    }
}

fn is_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Corrupt(_)))
}

#[test]
fn generation_row_decodes_its_role_and_refuses_an_unknown_one() {
    let row = |role: &str| GenerationRow {
        name: "balances".into(),
        generation: 3,
        plugin_hash: "sha256:ab".into(),
        role: role.into(),
        position: 42,
    };
    let record = GenerationRecord::try_from(row("shadow")).expect("a known role decodes");
    assert_eq!(record.role, GenerationRole::Shadow);
    assert_eq!((record.generation, record.position), (3, 42));
    assert!(is_corrupt(GenerationRecord::try_from(row("primary"))));
}

#[test]
fn deployment_row_decodes_its_mode_and_refuses_an_unknown_one() {
    let row = |mode: &str| DeploymentRow {
        id: 7,
        name: "bank".into(),
        hash: "sha256:cd".into(),
        kind: "aggregate".into(),
        mode: mode.into(),
        source: "upload".into(),
        size: 319,
        deployed_at: 5,
    };
    let deployment = Deployment::try_from(row("rollback")).expect("a known mode decodes");
    assert_eq!(deployment.mode, DeployMode::Rollback);
    assert_eq!((deployment.id, deployment.size), (7, 319));
    assert!(is_corrupt(Deployment::try_from(row("canary"))));
}

#[test]
fn instance_row_decodes_its_status_and_refuses_an_unknown_one() {
    let record = SagaInstanceRecord::try_from(instance_row("compensating")).expect("decodes");
    assert_eq!(record.status, SagaStatus::Compensating);
    assert_eq!((record.next_step, record.awaited_position), (4, 9));
    assert!(is_corrupt(SagaInstanceRecord::try_from(instance_row(
        "paused"
    ))));
    let counted = StatusCountRow {
        status: "failed".into(),
        count: 2,
    };
    assert_eq!(counted.parse().expect("decodes"), (SagaStatus::Failed, 2));
    let unknown = StatusCountRow {
        status: "paused".into(),
        count: 2,
    };
    assert!(is_corrupt(unknown.parse()));
}

#[test]
fn command_rows_decode_their_errors_and_refuse_json_that_does_not_parse() {
    let command = OutboxCommand::try_from(command_row(r#"[{"error":"x"}]"#)).expect("decodes");
    assert_eq!(command.errors, vec![serde_json::json!({"error": "x"})]);
    assert_eq!((command.step, command.attempts), (2, 3));
    assert!(is_corrupt(OutboxCommand::try_from(command_row("[{"))));
    let dead = |errors: &str| DeadLetterRow {
        id: 11,
        command: command_row(errors),
        dead_at: 99,
    };
    let letter = DeadLetter::try_from(dead("[]")).expect("decodes");
    assert_eq!((letter.id, letter.dead_at_us), (11, 99));
    assert!(is_corrupt(DeadLetter::try_from(dead("not json"))));
}

#[test]
fn history_row_decodes_its_entry_and_refuses_json_that_does_not_parse() {
    let row = |entry: &str| HistoryRow {
        at: 8,
        entry: entry.into(),
    };
    let entry = row(r#"{"step":1}"#).into_entry("t-1").expect("decodes");
    assert_eq!(entry.instance, "t-1");
    assert_eq!(entry.entry, serde_json::json!({"step": 1}));
    assert!(is_corrupt(row("{").into_entry("t-1")));
}

#[test]
fn convert_stops_at_the_first_row_that_does_not_decode() {
    let rows = vec![instance_row("running"), instance_row("bogus")];
    assert!(is_corrupt(convert::<_, SagaInstanceRecord>(rows)));
    let ok = convert::<_, SagaInstanceRecord>(vec![instance_row("running")]).expect("decodes");
    assert_eq!(ok.len(), 1);
}

#[test]
fn prefix_end_bounds_the_prefix_range() {
    assert_eq!(prefix_end("acc-"), Some("acc.".to_string()));
    assert_eq!(prefix_end(""), None);
    assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".to_string()));
    assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".to_string()));
}
