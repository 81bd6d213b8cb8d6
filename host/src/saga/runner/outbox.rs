//! The outbox of a saga runner: commands dispatched, their results, the
//! failures and timers delivered back to the plugin.

use super::records::{drop_from_outbox, failure_json, history};
use super::*;

impl Runner {
    // ----- command results -----

    pub(super) fn on_result(&mut self, (id, step, outcome): DispatchResult) {
        let max_attempts = self.config.max_attempts.max(1);
        let (base, max) = (self.config.retry_base, self.config.retry_max);
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        if inst.queue.front().map(|c| c.step) != Some(step) {
            // A result of a command this runner no longer holds (reloaded
            // or cancelled meanwhile).
            return;
        }
        inst.in_flight = false;
        let now = now_us();
        inst.record.updated_at_us = now;
        self.dirty.insert(id.clone());
        match outcome {
            Outcome::Applied {
                position,
                version,
                events,
                replayed,
            } => {
                let Some(c) = inst.queue.pop_front() else {
                    return;
                };
                inst.record.awaited_position = inst.record.awaited_position.max(position);
                inst.retry_at_ms = 0;
                drop_from_outbox(&mut self.commit, &id, step);
                self.commit.history.push(history(
                    &id,
                    json!({"kind": "command", "step": step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "outcome": "applied", "version": version, "position": position, "events": events, "replayed": replayed, "attempts": c.attempts + 1}),
                ));
                self.maybe_complete(&id);
            }
            Outcome::Refused(failure) => {
                let Some(c) = inst.queue.pop_front() else {
                    return;
                };
                drop_from_outbox(&mut self.commit, &id, step);
                self.commit.history.push(history(
                    &id,
                    json!({"kind": "command", "step": step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "outcome": "refused", "error": failure_json(&failure)}),
                ));
                inst.refused = Some((c, failure, now / 1000));
            }
            Outcome::Transient { code, message } => {
                let Some(c) = inst.queue.front_mut() else {
                    return;
                };
                c.attempts += 1;
                c.errors
                    .push(json!({"at": rfc3339(now), "code": code, "message": message}));
                let attempts = c.attempts;
                let summary = json!({"kind": "command", "step": step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "attempt": attempts, "error": {"code": code, "message": message}});
                if attempts >= max_attempts {
                    let Some(c) = inst.queue.pop_front() else {
                        return;
                    };
                    tracing::warn!(saga = %c.saga, instance = %id, step, attempts, "saga command moved to the dead-letter list");
                    inst.record.status = SagaStatus::Failed;
                    self.commit.dead_letters.push(c);
                    let mut entry = summary;
                    entry["outcome"] = "dead_letter".into();
                    self.commit.history.push(history(&id, entry));
                } else {
                    let delay = dispatch::backoff(attempts, base, max);
                    inst.retry_at_ms = now / 1000 + delay.as_millis() as i64;
                    self.commit.outbox_put.push(c.clone());
                    let mut entry = summary;
                    entry["outcome"] = "retry".into();
                    entry["retry_in_ms"] = (delay.as_millis() as u64).into();
                    self.commit.history.push(history(&id, entry));
                }
            }
        }
    }

    // ----- failures and timers -----

    pub(super) async fn deliver_failures(&mut self) {
        let ready: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, i)| i.refused.is_some() && i.settled(self.checkpoint))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            if self.poison.is_some() {
                return;
            }
            let Some((command, failure, at_ms)) =
                self.instances.get(&id).and_then(|i| i.refused.clone())
            else {
                continue;
            };
            let state = self
                .instances
                .get(&id)
                .map(|i| i.record.state.clone())
                .unwrap_or_default();
            let failed = WitFailedCommand {
                command: WitOutgoingCommand {
                    aggregate: command.aggregate.clone(),
                    id: command.aggregate_id.clone(),
                    command_type: command.command_type.clone(),
                    data: command.data.clone().into_bytes(),
                },
                failure: failure.clone(),
            };
            let result = async {
                let mut plugin = self.instance_at(at_ms).await?;
                plugin
                    .on_failure(&state, &failed)
                    .await?
                    .map_err(|e| Stop::Poison(format!("on-failure returned an error: {e}")))
            }
            .await;
            let entry = json!({"kind": "failure", "step": command.step, "type": command.command_type, "error": failure_json(&failure)});
            let applied = match result {
                Ok(reaction) => {
                    if let Some(i) = self.instances.get_mut(&id) {
                        i.refused = None;
                    }
                    self.apply(&id, reaction, &format!("command:{}", command.step), entry)
                        .map_err(Stop::Poison)
                }
                Err(stop) => Err(stop),
            };
            match applied {
                Ok(()) => {}
                Err(Stop::Poison(message)) => {
                    if let Some(i) = self.instances.get_mut(&id) {
                        i.refused = Some((command, failure, at_ms));
                    }
                    tracing::error!(saga = self.name(), instance = %id, %message, "saga failed in on-failure; it waits for an operator");
                    self.poison = Some(Poison::Failure {
                        instance: id,
                        message,
                    });
                }
                Err(Stop::Transient(message)) => {
                    self.pause(&message);
                    return;
                }
            }
        }
    }

    pub(super) async fn deliver_timers(&mut self) {
        let now = now_ms();
        let due: Vec<(i64, String, String)> = self
            .timers
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .filter(|(_, id, _)| {
                self.instances
                    .get(id)
                    .is_some_and(|i| i.refused.is_none() && i.settled(self.checkpoint))
            })
            .cloned()
            .collect();
        for (at, id, name) in due {
            if self.poison.is_some() {
                return;
            }
            let state = self
                .instances
                .get(&id)
                .map(|i| i.record.state.clone())
                .unwrap_or_default();
            let timer = WitTimer {
                name: name.clone(),
                fire_at_ms: at,
            };
            let result = async {
                let mut plugin = self.instance_at(at).await?;
                plugin
                    .on_timer(&state, &timer)
                    .await?
                    .map_err(|e| Stop::Poison(format!("on-timer returned an error: {e}")))
            }
            .await;
            let entry = json!({"kind": "timer", "name": name, "fire_at": rfc3339(at * 1000)});
            let applied = match result {
                Ok(reaction) => {
                    self.timers.remove(&(at, id.clone(), name.clone()));
                    self.commit
                        .timers_delete
                        .push((id.clone(), Some(name.clone())));
                    self.apply(&id, reaction, &format!("timer:{name}"), entry)
                        .map_err(Stop::Poison)
                }
                Err(stop) => Err(stop),
            };
            match applied {
                Ok(()) => {}
                Err(Stop::Poison(message)) => {
                    tracing::error!(saga = self.name(), instance = %id, timer = %name, %message, "saga failed in on-timer; it waits for an operator");
                    self.poison = Some(Poison::Timer {
                        instance: id,
                        name,
                        message,
                    });
                }
                Err(Stop::Transient(message)) => {
                    self.pause(&message);
                    return;
                }
            }
        }
    }

    /// Start the next command of every instance that has one ready.
    pub(super) fn dispatch(&mut self) {
        let now = now_ms();
        for (id, inst) in self.instances.iter_mut() {
            if inst.in_flight
                || inst.refused.is_some()
                || inst.record.status == SagaStatus::Failed
                || inst.retry_at_ms > now
            {
                continue;
            }
            let Some(command) = inst.queue.front().cloned() else {
                continue;
            };
            if self
                .unsettled
                .get(&(id.clone(), command.step))
                .is_some_and(|seq| *seq > self.ordered_seq)
            {
                // Its commit is neither written nor ordered before it yet.
                continue;
            }
            inst.in_flight = true;
            let pipeline = self.pipeline.clone();
            let results = self.results.clone();
            let slots = self.slots.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let outcome = dispatch::execute(&pipeline, &command).await;
                let _ = results.send((id, command.step, outcome));
            });
        }
    }
}
