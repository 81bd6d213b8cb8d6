//! What operators do to a projection: rebuild, resume, promote a shadow,
//! drop it, compare two generations.

use std::sync::Arc;

use super::runner::{Control, Generation};
use super::{ProjectionError, Projections};
use crate::runtime::Plugin;
use crate::store::{GenerationRecord, GenerationRole};

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
    /// every failed generation of the projection.
    pub async fn resume(&self, name: &str, skip: bool) -> Result<usize, ProjectionError> {
        let entry = self.entry_here(name)?;
        let state = entry.state.lock().await;
        let mut resumed = 0;
        let generations = state.active.iter().chain(state.next.iter().map(|(g, _)| g));
        for generation in generations {
            if generation.progress().poison.is_some()
                && generation.control(Control::Resume { skip }).await
            {
                resumed += 1;
            }
        }
        if resumed == 0 {
            return Err(ProjectionError::Conflict(format!(
                "projection {name} has not failed; nothing to resume"
            )));
        }
        Ok(resumed)
    }

    /// `POST /projections/{name}/promote`: make the shadow generation switch
    /// over as soon as it has caught up.
    pub async fn promote(&self, name: &str) -> Result<u64, ProjectionError> {
        let entry = self.entry_here(name)?;
        let generation = {
            let mut state = entry.state.lock().await;
            match &mut state.next {
                Some((generation, role)) if *role == GenerationRole::Shadow => {
                    *role = GenerationRole::Building;
                    self.views()
                        .save_generation(GenerationRecord {
                            name: name.to_string(),
                            generation: generation.generation,
                            plugin_hash: generation.plugin.hash.clone(),
                            role: GenerationRole::Building,
                            position: 0,
                        })
                        .await?;
                    generation.generation
                }
                _ => {
                    return Err(ProjectionError::Conflict(format!(
                        "projection {name} has no shadow generation to promote"
                    )));
                }
            }
        };
        self.maybe_switch(name, generation).await;
        Ok(generation)
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
