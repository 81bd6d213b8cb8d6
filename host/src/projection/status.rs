//! A projection's status, as operators watch it.

use serde::Serialize;

use super::runner::{self, Poison};
use super::{ProjectionError, Projections};
use crate::lease::PROJECTION_PREFIX;
use crate::store::{GenerationRole, Position};

/// A projection's status, as `GET /projections/{name}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub plugin: Option<String>,
    pub generation: u64,
    /// `running`, `rebuilding`, `paused` or `failed`; `elsewhere` when
    /// another host runs it (the position is then the stored checkpoint).
    pub state: &'static str,
    /// Whether this host runs it.
    pub runs_here: bool,
    /// The host holding its lease (`null` when leases are off or none holds it).
    pub host: Option<String>,
    pub position: Position,
    pub head: Position,
    pub lag: u64,
    pub error: Option<ErrorStatus>,
    pub rebuild: Option<RebuildStatus>,
    pub events_processed: u64,
    pub batches: u64,
    /// Duration of the last batch, milliseconds.
    pub last_batch_ms: f64,
    /// Where the serving generation's time went since start, milliseconds.
    pub time_ms: TimeStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeStatus {
    /// Waiting for events to be read.
    pub read: f64,
    /// Instantiating and running the plugin.
    pub plugin: f64,
    /// Committing view rows with the checkpoint.
    pub commit: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorStatus {
    pub message: String,
    /// The poison event's position.
    pub position: Position,
    pub stream_id: String,
    pub event_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RebuildStatus {
    pub generation: u64,
    pub plugin: String,
    /// `live` (switches when caught up) or `shadow` (waits for promote).
    pub mode: &'static str,
    pub position: Position,
    pub head: Position,
    pub progress: f64,
    pub caught_up: bool,
    pub error: Option<ErrorStatus>,
}

fn error_status(poison: &Option<Poison>, retrying: &Option<String>) -> Option<ErrorStatus> {
    match (poison, retrying) {
        (Some(p), _) => Some(ErrorStatus {
            message: p.message.clone(),
            position: p.position,
            stream_id: p.stream_id.clone(),
            event_type: p.event_type.clone(),
        }),
        (None, Some(message)) => Some(ErrorStatus {
            message: message.clone(),
            position: 0,
            stream_id: String::new(),
            event_type: String::new(),
        }),
        (None, None) => None,
    }
}

impl Projections {
    /// The status of one projection.
    pub async fn status(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let entry = self.get(name).ok_or_else(|| self.missing(name))?;
        let head = *self.ctx.log.subscribe_head().borrow();
        let host = if self.leases.enabled() {
            self.leases
                .holder_of(&format!("{PROJECTION_PREFIX}{name}"))
                .await
        } else {
            None
        };
        if !entry.runs_here() {
            return self.status_elsewhere(name, head, host).await;
        }
        let state = entry.state.lock().await;
        let (plugin, generation, progress) = match &state.active {
            Some(a) => (Some(a.plugin.hash.clone()), a.generation, a.progress()),
            None => (None, 0, runner::Progress::default()),
        };
        let rebuild = state.next.as_ref().map(|(next, role)| {
            let p = next.progress();
            RebuildStatus {
                generation: next.generation,
                plugin: next.plugin.hash.clone(),
                mode: if *role == GenerationRole::Shadow {
                    "shadow"
                } else {
                    "live"
                },
                position: p.position,
                head,
                progress: if head == 0 {
                    1.0
                } else {
                    (p.position as f64 / head as f64).min(1.0)
                },
                caught_up: p.position >= head,
                error: error_status(&p.poison, &None),
            }
        });
        let state_name = if progress.poison.is_some() {
            "failed"
        } else if rebuild.is_some() {
            "rebuilding"
        } else if progress.stopped {
            "paused"
        } else {
            "running"
        };
        Ok(ProjectionStatus {
            name: name.to_string(),
            plugin,
            generation,
            state: state_name,
            runs_here: true,
            host,
            position: progress.position,
            head,
            lag: head.saturating_sub(progress.position),
            error: error_status(&progress.poison, &progress.retrying),
            rebuild,
            events_processed: progress.events_processed,
            batches: progress.batches,
            last_batch_ms: progress.last_batch.as_secs_f64() * 1000.0,
            time_ms: TimeStatus {
                read: progress.read_time.as_secs_f64() * 1000.0,
                plugin: progress.plugin_time.as_secs_f64() * 1000.0,
                commit: progress.commit_time.as_secs_f64() * 1000.0,
            },
        })
    }

    /// The status of a projection another host runs: its stored checkpoint.
    async fn status_elsewhere(
        &self,
        name: &str,
        head: Position,
        host: Option<String>,
    ) -> Result<ProjectionStatus, ProjectionError> {
        let serving = self.stored_serving(name).await?;
        let head = head.max(self.ctx.log.head_position().await?);
        let plugin = self
            .views()
            .generations()
            .await?
            .into_iter()
            .find(|r| r.name == name && r.generation == serving.generation)
            .map(|r| r.plugin_hash);
        Ok(ProjectionStatus {
            name: name.to_string(),
            plugin,
            generation: serving.generation,
            state: "elsewhere",
            runs_here: false,
            host,
            position: serving.position,
            head,
            lag: head.saturating_sub(serving.position),
            error: None,
            rebuild: None,
            events_processed: 0,
            batches: 0,
            last_batch_ms: 0.0,
            time_ms: TimeStatus {
                read: 0.0,
                plugin: 0.0,
                commit: 0.0,
            },
        })
    }

    /// Every projection's status, by name.
    pub async fn statuses(&self) -> Vec<ProjectionStatus> {
        let mut out = Vec::new();
        for name in self.names() {
            if let Ok(status) = self.status(&name).await {
                out.push(status);
            }
        }
        out
    }
}
