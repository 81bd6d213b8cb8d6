//! What operators do to a projection: rebuild, resume, promote a shadow,
//! drop it, compare two generations.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::runner::{Control, Generation, Poison, RetryOutcome, Serving};
use super::{EntryState, ProjectionError, Projections};
use crate::runtime::Plugin;
use crate::store::{DeployMode, GenerationRecord, GenerationRole, Position};

/// What a resume did to one failed generation.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub generation: u64,
    /// Its checkpoint once the answer came.
    pub position: Position,
    pub outcome: ResumeOutcome,
}

/// How the retry (or skip) of a poison event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// The generation went past the event.
    Passed,
    /// It failed on the same event again.
    FailedAgain(Poison),
    /// No answer in time: it is still retrying.
    Pending,
}

fn no_shadow(name: &str) -> ProjectionError {
    ProjectionError::Conflict(format!(
        "projection {name} has no shadow generation to promote"
    ))
}

impl Projections {
    /// `POST /projections/{name}/rebuild`: a new generation of the version
    /// that serves, switched to when it has caught up.
    pub async fn rebuild(&self, name: &str) -> Result<u64, ProjectionError> {
        let entry = self.entry_here(name)?;
        let mut state = entry.state.lock().await;
        let plugin = state
            .active
            .as_ref()
            .map(|a| a.plugin.clone())
            .ok_or_else(|| ProjectionError::NotFound(name.into()))?;
        if let Some((next, _)) = state.next.take() {
            self.retire(next).await;
        }
        let generation = self
            .create(&entry, &mut state, plugin, GenerationRole::Building)
            .await?;
        let number = generation.generation;
        state.next = Some((generation, GenerationRole::Building));
        tracing::info!(projection = name, generation = number, "rebuild started");
        Ok(number)
    }

    /// `POST /projections/{name}/resume`: retry or skip the poison event of
    /// every failed generation of the projection, and say how each did on
    /// it (waiting at most `wait` for the answer).
    pub async fn resume(
        &self,
        name: &str,
        skip: bool,
        wait: Duration,
    ) -> Result<Vec<Resumed>, ProjectionError> {
        let entry = self.entry_here(name)?;
        let mut answers = Vec::new();
        {
            let state = entry.state.lock().await;
            let generations = state.active.iter().chain(state.next.iter().map(|(g, _)| g));
            for generation in generations {
                if generation.progress().poison.is_none() {
                    continue;
                }
                let (reply, answer) = oneshot::channel();
                if generation.control(Control::Resume { skip, reply }).await {
                    answers.push((generation.clone(), answer));
                }
            }
        }
        if answers.is_empty() {
            return Err(ProjectionError::Conflict(format!(
                "projection {name} has not failed; nothing to resume"
            )));
        }
        // The runners answer once they have processed the event again (or
        // failed on it), without the entry locked: a switch may need it.
        let deadline = tokio::time::Instant::now() + wait;
        let mut resumed = Vec::new();
        for (generation, answer) in answers {
            let outcome = match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(RetryOutcome::Passed)) => ResumeOutcome::Passed,
                Ok(Ok(RetryOutcome::FailedAgain(poison))) => ResumeOutcome::FailedAgain(poison),
                // Still at it, or stopped meanwhile.
                Ok(Err(_)) | Err(_) => ResumeOutcome::Pending,
            };
            resumed.push(Resumed {
                generation: generation.generation,
                position: generation.progress().position,
                outcome,
            });
        }
        Ok(resumed)
    }

    /// `POST /projections/{name}/promote`: make the shadow generation switch
    /// over as soon as it has caught up. Returns its number.
    pub async fn promote(&self, name: &str) -> Result<u64, ProjectionError> {
        let entry = self.entry_here(name)?;
        let generation = {
            let mut state = entry.state.lock().await;
            self.promote_next(name, &mut state).await?
        };
        self.maybe_switch(name, generation).await;
        Ok(generation)
    }

    /// The shadow generation becomes a building one, in the store too (a
    /// restart goes on building it to switch), and its version is the
    /// current one, live. Returns its number.
    pub(super) async fn promote_next(
        &self,
        name: &str,
        state: &mut EntryState,
    ) -> Result<u64, ProjectionError> {
        let Some((generation, role)) = &mut state.next else {
            return Err(no_shadow(name));
        };
        if *role != GenerationRole::Shadow {
            return Err(no_shadow(name));
        }
        self.views()
            .save_generation(GenerationRecord {
                name: name.to_string(),
                generation: generation.generation,
                plugin_hash: generation.plugin.hash.clone(),
                role: GenerationRole::Building,
                position: 0,
            })
            .await?;
        *role = GenerationRole::Building;
        let (number, plugin) = (generation.generation, generation.plugin.clone());
        state.current = Some((plugin, DeployMode::Live));
        tracing::info!(
            projection = name,
            generation = number,
            "shadow promoted; it serves once it has caught up"
        );
        Ok(number)
    }

    /// The version of the shadow generation, for an operator's promote.
    pub async fn shadow_plugin(&self, name: &str) -> Result<Arc<Plugin>, ProjectionError> {
        let entry = self.entry_here(name)?;
        let state = entry.state.lock().await;
        match &state.next {
            Some((generation, GenerationRole::Shadow)) => Ok(generation.plugin.clone()),
            _ => Err(no_shadow(name)),
        }
    }

    /// The second generation (the shadow, or one being built) as stored:
    /// its number and checkpoint, for reading its rows on any host.
    pub async fn shadow_view(&self, name: &str) -> Result<Serving, ProjectionError> {
        if self.get(name).is_none() {
            return Err(ProjectionError::NotFound(name.into()));
        }
        self.views()
            .generations()
            .await?
            .into_iter()
            .filter(|r| {
                r.name == name
                    && matches!(r.role, GenerationRole::Shadow | GenerationRole::Building)
            })
            .max_by_key(|r| r.generation)
            .map(|r| Serving {
                generation: r.generation,
                position: r.position,
                failed: false,
            })
            .ok_or_else(|| {
                ProjectionError::NoShadow(format!("projection {name} has no shadow generation"))
            })
    }

    /// `DELETE /projections/{name}/shadow`: stop and drop the shadow
    /// generation. Returns the plugin that serves, which is current again.
    pub async fn drop_shadow(&self, name: &str) -> Result<Arc<Plugin>, ProjectionError> {
        let entry = self.entry_here(name)?;
        let mut state = entry.state.lock().await;
        match state.next.take() {
            Some((generation, GenerationRole::Shadow)) => {
                self.retire(generation).await;
                state
                    .active
                    .as_ref()
                    .map(|a| a.plugin.clone())
                    .ok_or_else(|| ProjectionError::NotFound(name.into()))
            }
            other => {
                state.next = other;
                Err(ProjectionError::Conflict(format!(
                    "projection {name} has no shadow generation"
                )))
            }
        }
    }

    /// The active and shadow (or building) generations, for a diff.
    pub async fn pair(
        &self,
        name: &str,
    ) -> Result<(Arc<Generation>, Arc<Generation>), ProjectionError> {
        let entry = self.entry_here(name)?;
        let state = entry.state.lock().await;
        match (&state.active, &state.next) {
            (Some(active), Some((next, _))) => Ok((active.clone(), next.clone())),
            _ => Err(ProjectionError::Conflict(format!(
                "projection {name} has no second generation to compare with"
            ))),
        }
    }
}
