//! What a saga runner does with events: correlate each to an instance,
//! react, and apply the reaction (state, commands, timers) to the batch.

use super::records::{drop_from_outbox, history};
use super::*;

impl Runner {
    /// Read the next batch of events up to `head`, correlate and react to
    /// each, and move the checkpoint past what was handled.
    pub(super) async fn process_events(&mut self, head: Position) {
        if self.checkpoint >= head {
            return;
        }
        let Some(events) = self.read_batch(head).await else {
            return;
        };
        let full = events.len() >= self.config.batch_size.max(1) as usize;
        let mut last = match (full, events.last()) {
            (true, Some(e)) => e.position,
            _ => head,
        };
        if let Some((position, stop)) = self.react_to_batch(&events).await {
            last = position - 1;
            match stop {
                Stop::Poison(message) => {
                    tracing::error!(saga = self.name(), position, %message, "saga failed on an event; it waits for an operator");
                    self.poison = Some(Poison::Event { position, message });
                }
                Stop::Transient(message) => self.pause(&message),
            }
        }
        if last > self.checkpoint {
            let from = self.commit.checkpoint.map_or(self.checkpoint, |(f, _)| f);
            self.commit.checkpoint = Some((from, last));
            self.checkpoint = last;
        }
    }

    /// The events after the checkpoint up to `head` that the saga asks for
    /// (a batch at most); `None` when the runner paused or stopped.
    async fn read_batch(&mut self, head: Position) -> Option<Vec<RecordedEvent>> {
        if self.subscriptions.is_none() {
            match self.load_subscriptions().await {
                Ok(s) => self.subscriptions = Some(s),
                Err(Stop::Poison(message)) => {
                    self.poison = Some(Poison::Event {
                        position: self.checkpoint + 1,
                        message,
                    });
                    return None;
                }
                Err(Stop::Transient(message)) => {
                    self.pause(&message);
                    return None;
                }
            }
        }
        let types = self.subscriptions.clone().unwrap_or_default();
        let read = self
            .log
            .read_global(GlobalQuery {
                from_position: self.checkpoint + 1,
                until_position: Some(head),
                limit: self.config.batch_size.max(1),
                types: (!types.is_empty()).then_some(types.as_slice()),
            })
            .await;
        match read {
            Ok(events) => Some(events),
            Err(e) => {
                self.pause(&e.to_string());
                None
            }
        }
    }

    /// Correlate every event of a batch, then react to each in order. The
    /// event the runner stopped at, and why, if it did.
    async fn react_to_batch(&mut self, events: &[RecordedEvent]) -> Option<(Position, Stop)> {
        // Which instance each event belongs to, first, so that the instances
        // not in memory are read in one query rather than one per event.
        let mut ids: Vec<Option<String>> = Vec::with_capacity(events.len());
        let mut stopped: Option<(Position, Stop)> = None;
        // One plugin instance maps the whole batch: a JavaScript or Python
        // instance costs about a millisecond to start.
        let mut correlator: Option<SagaInstance> = None;
        for event in events {
            match self.correlate(&mut correlator, event).await {
                Ok(id) => ids.push(id),
                Err(stop) => {
                    stopped = Some((event.position, stop));
                    break;
                }
            }
        }
        drop(correlator);
        let completed = match self.load_instances(&ids).await {
            Ok(completed) => completed,
            // Nothing of the batch is handled: the checkpoint stays.
            Err(e) => return Some((self.checkpoint + 1, Stop::Transient(e.to_string()))),
        };
        for (event, id) in events.iter().zip(ids) {
            let Some(id) = id else { continue };
            if let Err(stop) = self.react_to(event, id, &completed).await {
                return Some((event.position, stop));
            }
        }
        stopped
    }

    pub(super) fn pause(&mut self, message: &str) {
        tracing::warn!(saga = self.name(), %message, "saga paused after a transient failure");
        self.pause_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
    }

    pub(super) async fn load_subscriptions(&self) -> Result<Vec<String>, Stop> {
        let mut instance = self.instance_at(now_ms()).await?;
        Ok(instance.subscriptions().await?)
    }

    /// The instance an event belongs to, if any, asked of `plugin` (started
    /// on first use and reused for the rest of the batch).
    pub(super) async fn correlate(
        &self,
        plugin: &mut Option<SagaInstance>,
        event: &RecordedEvent,
    ) -> Result<Option<String>, Stop> {
        let wit = to_wit_event(event);
        let plugin = match plugin {
            Some(plugin) => plugin,
            None => plugin.insert(self.instance_at(wit.recorded_at_ms).await?),
        };
        let Some(id) = plugin.correlate(&wit).await? else {
            return Ok(None);
        };
        validate_instance_id(&id).map_err(Stop::Poison)?;
        Ok(Some(id))
    }

    /// Read the instances among `ids` not in memory (every instance not
    /// completed is in memory once loaded, so these are new or completed);
    /// the completed ones.
    pub(super) async fn load_instances(
        &mut self,
        ids: &[Option<String>],
    ) -> Result<HashSet<String>, StoreError> {
        let mut unknown: Vec<String> = ids
            .iter()
            .flatten()
            .filter(|id| !self.instances.contains_key(*id))
            .cloned()
            .collect();
        unknown.sort();
        unknown.dedup();
        let mut completed = HashSet::new();
        if unknown.is_empty() {
            return Ok(completed);
        }
        for record in self.store.saga_instances(self.name(), &unknown).await? {
            if record.status == SagaStatus::Completed {
                completed.insert(record.instance);
            } else {
                self.instances
                    .insert(record.instance.clone(), Instance::new(record));
            }
        }
        Ok(completed)
    }

    /// React to an event of instance `id` (a new one unless it is in memory
    /// or in `completed`, which takes no more events).
    pub(super) async fn react_to(
        &mut self,
        event: &RecordedEvent,
        id: String,
        completed: &HashSet<String>,
    ) -> Result<(), Stop> {
        if !self.instances.contains_key(&id) {
            if completed.contains(&id) {
                return Ok(());
            }
            let now = now_us();
            let record = SagaInstanceRecord {
                saga: self.name().to_string(),
                instance: id.clone(),
                state: Vec::new(),
                status: SagaStatus::Running,
                done: false,
                next_step: 1,
                awaited_position: 0,
                created_at_us: now,
                updated_at_us: now,
            };
            self.instances.insert(id.clone(), Instance::new(record));
        }
        let Some(state) = self
            .instances
            .get(&id)
            .filter(|i| !i.record.done)
            .map(|i| i.record.state.clone())
        else {
            return Ok(());
        };
        let wit = to_wit_event(event);
        let mut plugin = self.instance_at(wit.recorded_at_ms).await?;
        let reaction = plugin
            .react(&state, &wit)
            .await?
            .map_err(|e| Stop::Poison(format!("react returned an error: {e}")))?;
        let entry = json!({
            "kind": "event",
            "position": event.position,
            "stream_id": event.stream_id,
            "type": event.event_type,
        });
        self.apply(&id, reaction, &event.position.to_string(), entry)
            .map_err(Stop::Poison)
    }

    // ----- reactions -----

    /// Record what the plugin decided for instance `id`: new state, outbox
    /// commands, timer, flags; `entry` is the history entry, completed with
    /// what was decided.
    pub(super) fn apply(
        &mut self,
        id: &str,
        reaction: WitReaction,
        causation: &str,
        mut entry: Value,
    ) -> Result<(), String> {
        self.check_reaction(&reaction)?;
        let saga = self.name().to_string();
        let now = now_us();
        let Some(inst) = self.instances.get_mut(id) else {
            return Err(format!("instance {id} is not loaded"));
        };
        inst.record.state = reaction.state;
        inst.record.updated_at_us = now;
        if reaction.cancel_pending {
            let keep = usize::from(inst.in_flight);
            while inst.queue.len() > keep {
                if let Some(c) = inst.queue.pop_back() {
                    drop_from_outbox(&mut self.commit, id, c.step);
                    self.commit.history.push(history(
                        id,
                        json!({"kind": "command", "step": c.step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "outcome": "cancelled"}),
                    ));
                }
            }
            inst.retry_at_ms = 0;
        }
        let mut steps = Vec::new();
        for c in reaction.commands {
            let step = inst.record.next_step;
            inst.record.next_step += 1;
            let command = outbox_command(&saga, id, step, causation, c, reaction.compensating, now);
            steps.push(json!({"step": step, "aggregate": command.aggregate, "id": command.aggregate_id, "type": command.command_type}));
            self.commit.outbox_put.push(command.clone());
            self.unsettled
                .insert((id.to_string(), step), self.commit_seq);
            inst.queue.push_back(command);
        }
        if let Some(t) = reaction.timer {
            self.timers.retain(|(_, i, n)| !(i == id && *n == t.name));
            self.timers
                .insert((t.fire_at_ms, id.to_string(), t.name.clone()));
            self.commit.timers_put.push(SagaTimerRecord {
                instance: id.to_string(),
                name: t.name.clone(),
                fire_at_ms: t.fire_at_ms,
            });
            entry["timer"] = json!({"name": t.name, "fire_at": rfc3339(t.fire_at_ms * 1000)});
        }
        if reaction.compensating && inst.record.status != SagaStatus::Failed {
            inst.record.status = SagaStatus::Compensating;
        }
        if reaction.done {
            inst.record.done = true;
        }
        entry["commands"] = Value::Array(steps);
        entry["compensating"] = reaction.compensating.into();
        entry["cancel_pending"] = reaction.cancel_pending.into();
        entry["done"] = reaction.done.into();
        self.commit.history.push(history(id, entry));
        self.dirty.insert(id.to_string());
        self.maybe_complete(id);
        Ok(())
    }

    /// A reaction within the limits: its state's size, its commands, its
    /// timer's name.
    fn check_reaction(&self, reaction: &WitReaction) -> Result<(), String> {
        let limits = self.pipeline.limits();
        if reaction.state.len() > limits.view_value_bytes_max {
            return Err(format!(
                "the instance state of {} bytes is over the limit of {} bytes",
                reaction.state.len(),
                limits.view_value_bytes_max
            ));
        }
        for c in &reaction.commands {
            validate_command(c, limits.event_bytes_max)?;
        }
        if let Some(t) = &reaction.timer
            && t.name.is_empty()
        {
            return Err("a timer has an empty name".into());
        }
        Ok(())
    }

    /// Complete an instance that is done once nothing of it is left to run.
    pub(super) fn maybe_complete(&mut self, id: &str) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if !inst.record.done
            || !inst.queue.is_empty()
            || inst.in_flight
            || inst.refused.is_some()
            || inst.record.status == SagaStatus::Failed
        {
            return;
        }
        inst.record.status = SagaStatus::Completed;
        self.timers.retain(|(_, i, _)| i != id);
        self.commit.timers_delete.push((id.to_string(), None));
        self.commit
            .history
            .push(history(id, json!({"kind": "completed"})));
        self.dirty.insert(id.to_string());
    }
}

/// Step `step` of instance `id` as an outbox command, with the metadata
/// that ties its events to the instance and to the event that caused it.
fn outbox_command(
    saga: &str,
    id: &str,
    step: u64,
    causation: &str,
    command: WitOutgoingCommand,
    compensating: bool,
    now: i64,
) -> OutboxCommand {
    let metadata = json!({
        "correlation_id": id,
        "causation_id": causation,
        "saga": saga,
        "saga_instance": id,
        "saga_step": step,
    });
    OutboxCommand {
        saga: saga.to_string(),
        instance: id.to_string(),
        step,
        aggregate: command.aggregate,
        aggregate_id: command.id,
        command_type: command.command_type,
        data: String::from_utf8(command.data).unwrap_or_default(),
        metadata: metadata.to_string(),
        compensating,
        attempts: 0,
        errors: Vec::new(),
        created_at_us: now,
        idempotency_key: dispatch::idempotency_key(saga, id, step, now),
    }
}

pub(super) fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > INSTANCE_CHARS_MAX || id.chars().any(char::is_control)
    {
        return Err(format!(
            "correlate returned the instance id {id:?}: use 1 to {INSTANCE_CHARS_MAX} characters, no control characters"
        ));
    }
    Ok(())
}

pub(super) fn validate_command(
    c: &WitOutgoingCommand,
    data_bytes_max: usize,
) -> Result<(), String> {
    crate::registry::validate_name(&c.aggregate)
        .map_err(|e| format!("a command names a bad aggregate: {e}"))?;
    if c.id.is_empty()
        || c.id.chars().count() > crate::command::pipeline::ID_CHARS_MAX
        || c.id.chars().any(char::is_control)
    {
        return Err(format!(
            "a command for {} has a bad id {:?}",
            c.aggregate, c.id
        ));
    }
    if c.command_type.is_empty() {
        return Err(format!(
            "a command for {}-{} has an empty type",
            c.aggregate, c.id
        ));
    }
    if c.data.len() > data_bytes_max {
        return Err(format!(
            "a {} command has data of {} bytes, over the limit of {data_bytes_max}",
            c.command_type,
            c.data.len()
        ));
    }
    let text = std::str::from_utf8(&c.data)
        .map_err(|_| format!("the data of a {} command is not UTF-8 JSON", c.command_type))?;
    serde_json::from_str::<&serde_json::value::RawValue>(text)
        .map_err(|e| format!("the data of a {} command is not JSON: {e}", c.command_type))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_and_commands_are_checked() {
        assert!(validate_instance_id("t1").is_ok());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("a\nb").is_err());
        assert!(validate_instance_id(&"x".repeat(INSTANCE_CHARS_MAX + 1)).is_err());
        let ok = WitOutgoingCommand {
            aggregate: "bank_account".into(),
            id: "a".into(),
            command_type: "Deposit".into(),
            data: br#"{"amount": 5}"#.to_vec(),
        };
        assert!(validate_command(&ok, 1024).is_ok());
        let mut bad = ok.clone();
        bad.data = b"{not json".to_vec();
        assert!(
            validate_command(&bad, 1024)
                .unwrap_err()
                .contains("not JSON")
        );
        let mut bad = ok.clone();
        bad.aggregate = "Bank-Account".into();
        assert!(validate_command(&bad, 1024).is_err());
        assert!(
            validate_command(&ok, 4)
                .unwrap_err()
                .contains("over the limit")
        );
    }
}
