//! What an operator asks of a saga runner: resume after a trap, retry a
//! dead letter.

use super::records::history;
use super::*;

impl Runner {
    // ----- operators -----

    pub(super) async fn on_control(&mut self, control: Control) {
        match control {
            Control::Stop => {}
            Control::Swap(plugin) => {
                tracing::info!(saga = self.name(), hash = %plugin.hash, "saga runs a new version");
                self.plugin = plugin;
                self.subscriptions = None;
                self.poison = None;
            }
            Control::RetryDeadLetter(id, reply) => {
                let result = self.retry_dead_letter(id).await;
                let _ = reply.send(result);
            }
            Control::Resume { skip, reply } => {
                let result = self.resume(skip).await;
                let _ = reply.send(result);
            }
        }
    }

    pub(super) async fn retry_dead_letter(&mut self, id: u64) -> Result<(), SagaError> {
        let letter = self
            .store
            .dead_letter(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(format!("no dead letter {id}")))?;
        let mut command = letter.command;
        let instance = command.instance.clone();
        if !self.instances.contains_key(&instance) {
            let record = self
                .store
                .saga_instance(self.name(), &instance)
                .await?
                .ok_or_else(|| {
                    SagaError::NotFound(format!(
                        "the instance {instance} of dead letter {id} is gone"
                    ))
                })?;
            self.instances
                .insert(instance.clone(), Instance::new(record));
        }
        command.attempts = 0;
        let Some(inst) = self.instances.get_mut(&instance) else {
            return Err(SagaError::NotFound(format!("instance {instance}")));
        };
        let at = inst
            .queue
            .iter()
            .position(|c| c.step > command.step)
            .unwrap_or(inst.queue.len());
        if at == 0 && inst.in_flight {
            return Err(SagaError::Conflict(format!(
                "instance {instance} has a command executing; retry in a moment"
            )));
        }
        inst.queue.insert(at, command.clone());
        inst.retry_at_ms = 0;
        inst.record.status = if command.compensating || inst.queue.iter().any(|c| c.compensating) {
            SagaStatus::Compensating
        } else {
            SagaStatus::Running
        };
        self.commit.dead_letters_delete.push(id);
        self.commit.outbox_put.push(command.clone());
        self.commit.history.push(history(
            &instance,
            json!({"kind": "retry", "dead_letter": id, "step": command.step}),
        ));
        self.dirty.insert(instance);
        self.flush().await?;
        self.dispatch();
        Ok(())
    }

    pub(super) async fn resume(&mut self, skip: bool) -> Result<String, SagaError> {
        let Some(poison) = self.poison.take() else {
            return Err(SagaError::Conflict(format!(
                "saga {} is not waiting for an operator",
                self.name()
            )));
        };
        if !skip {
            return Ok(format!("retrying {}", poison.message()));
        }
        match &poison {
            Poison::Event { position, .. } => {
                let from = self.commit.checkpoint.map_or(self.checkpoint, |(f, _)| f);
                self.commit.checkpoint = Some((from, *position));
                self.checkpoint = *position;
            }
            Poison::Failure { instance, .. } => {
                if let Some(i) = self.instances.get_mut(instance) {
                    i.refused = None;
                }
                self.commit.history.push(history(
                    instance,
                    json!({"kind": "failure", "outcome": "skipped"}),
                ));
                self.dirty.insert(instance.clone());
                self.maybe_complete(&instance.clone());
            }
            Poison::Timer { instance, name, .. } => {
                self.timers
                    .retain(|(_, i, n)| !(i == instance && n == name));
                self.commit
                    .timers_delete
                    .push((instance.clone(), Some(name.clone())));
                self.commit.history.push(history(
                    instance,
                    json!({"kind": "timer", "name": name, "outcome": "skipped"}),
                ));
            }
        }
        if let Err(e) = self.flush().await {
            self.poison = Some(poison);
            return Err(e.into());
        }
        self.publish();
        Ok(format!("skipped {}", poison.message()))
    }
}
