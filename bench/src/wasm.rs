//! Phase 3: what the wasm part of one command costs, measured on the
//! `bank_account` plugin with the host's own runtime and limits.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};

use crate::stats;
use kiln::config::Limits;
use kiln::runtime::bindings::{WitCommand, WitEvent};
use kiln::runtime::{AggregateInstance, PluginCode, Runtime};
use kiln::store::now_us;

const INSTANTIATIONS: usize = 2_000;
const HANDLES: usize = 5_000;
const APPLY_BATCH: usize = 100;
const APPLIES: usize = 200;
const UNITS: usize = 2_000;

/// Medians, in µs.
#[derive(Debug, Clone, Default)]
pub struct WasmCost {
    /// A fresh sandboxed instance (store, WASI context, limits, instantiate).
    pub instantiate_us: f64,
    /// One `handle(Deposit)` on an open account, on a warm instance.
    pub handle_us: f64,
    /// One event of an `apply` of 100 Deposited events.
    pub apply_per_event_us: f64,
    /// The unit of work of one command as the pipeline runs it: a new
    /// instance, `apply` of the one pending event, `handle`.
    pub command_unit_us: f64,
}

fn event(version: u64, event_type: &str, data: &str) -> WitEvent {
    WitEvent {
        position: version,
        stream_id: "bank_account-acct000000".into(),
        version,
        event_type: event_type.into(),
        schema: 1,
        data: data.as_bytes().to_vec(),
        metadata: br#"{"causation_id":"c2a6c7d4-6c51-4f57-9e53-0f7c3d0e8a11","correlation_id":"c2a6c7d4-6c51-4f57-9e53-0f7c3d0e8a11"}"#.to_vec(),
        recorded_at_ms: now_us() / 1000,
    }
}

fn median_us(samples: &[f64]) -> f64 {
    stats::median(samples)
}

/// Compiles the plugin and runs every measurement.
pub async fn measure(
    limits: Limits,
    pooling: bool,
    plugins_dir: &Path,
) -> anyhow::Result<WasmCost> {
    measure_with_cache(limits, pooling, plugins_dir, None).await
}

/// [`measure`], loading the compiled plugin from `compile_cache` when given
/// (a JavaScript or Python component takes 10–20 s to compile).
pub async fn measure_with_cache(
    limits: Limits,
    pooling: bool,
    plugins_dir: &Path,
    compile_cache: Option<&Path>,
) -> anyhow::Result<WasmCost> {
    let path = plugins_dir.join("bank_account.wasm");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut runtime = Runtime::new(limits, pooling)?;
    if let Some(dir) = compile_cache {
        runtime = runtime
            .with_compile_cache(dir)
            .with_context(|| format!("opening the compile cache {}", dir.display()))?;
    }
    let plugin = runtime
        .compile("bank_account", &bytes)
        .map_err(|e| anyhow!("compiling bank_account: {e}"))?;
    let PluginCode::Aggregate(pre) = &plugin.code else {
        bail!("bank_account is not an aggregate");
    };
    let now_ms = now_us() / 1000;
    let new_instance = || async {
        AggregateInstance::new(&runtime, &plugin, pre, now_ms)
            .await
            .map_err(|e| anyhow!("{e}"))
    };
    let opened = [event(
        1,
        "Opened",
        r#"{"owner":"bench","overdraft_limit":0}"#,
    )];
    let deposited = event(2, "Deposited", r#"{"amount":1}"#);
    let deposit = WitCommand {
        command_type: "Deposit".into(),
        data: br#"{"amount":1}"#.to_vec(),
        metadata: deposited.metadata.clone(),
        stream_id: deposited.stream_id.clone(),
        issued_at_ms: now_ms,
    };

    let instantiate_us = instantiate_us(&new_instance).await?;
    let mut instance = new_instance().await?;
    let open_state = instance
        .apply(&[], &opened)
        .await
        .map_err(|e| anyhow!("apply: {e}"))?;
    let handle_us = handle_us(&mut instance, &open_state, &deposit).await?;
    let apply_per_event_us = apply_per_event_us(&mut instance, &open_state, &deposited).await?;
    drop(instance);
    let command_unit_us = command_unit_us(&new_instance, &open_state, deposited, &deposit).await?;

    Ok(WasmCost {
        instantiate_us,
        handle_us,
        apply_per_event_us,
        command_unit_us,
    })
}

/// A fresh sandboxed instance, [`INSTANTIATIONS`] times.
async fn instantiate_us<F>(new_instance: &impl Fn() -> F) -> anyhow::Result<f64>
where
    F: Future<Output = anyhow::Result<AggregateInstance>>,
{
    let mut samples = Vec::with_capacity(HANDLES);
    for _ in 0..INSTANTIATIONS {
        let t0 = Instant::now();
        let instance = new_instance().await?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        drop(instance);
    }
    Ok(median_us(&samples))
}

/// One deposit on an open account, on a warm instance, [`HANDLES`] times.
async fn handle_us(
    instance: &mut AggregateInstance,
    open_state: &[u8],
    deposit: &WitCommand,
) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(HANDLES);
    for _ in 0..HANDLES {
        let t0 = Instant::now();
        let decision = instance
            .handle(open_state, deposit)
            .await
            .map_err(|e| anyhow!("handle: {e}"))?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        if decision.is_err() {
            bail!("the plugin refused a deposit on an open account: {decision:?}");
        }
    }
    Ok(median_us(&samples))
}

/// `apply` of [`APPLY_BATCH`] deposits, per event, [`APPLIES`] times.
async fn apply_per_event_us(
    instance: &mut AggregateInstance,
    open_state: &[u8],
    deposited: &WitEvent,
) -> anyhow::Result<f64> {
    let batch: Vec<WitEvent> = (0..APPLY_BATCH as u64)
        .map(|i| WitEvent {
            version: 2 + i,
            position: 2 + i,
            ..deposited.clone()
        })
        .collect();
    let mut samples = Vec::with_capacity(HANDLES);
    for _ in 0..APPLIES {
        let t0 = Instant::now();
        let state = instance
            .apply(open_state, &batch)
            .await
            .map_err(|e| anyhow!("apply: {e}"))?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6 / APPLY_BATCH as f64);
        if state.is_empty() {
            bail!("apply returned no state");
        }
    }
    Ok(median_us(&samples))
}

/// A command's unit of work as the pipeline runs it (a new instance,
/// `apply` of the one pending event, `handle`), [`UNITS`] times.
async fn command_unit_us<F>(
    new_instance: &impl Fn() -> F,
    open_state: &[u8],
    deposited: WitEvent,
    deposit: &WitCommand,
) -> anyhow::Result<f64>
where
    F: Future<Output = anyhow::Result<AggregateInstance>>,
{
    let pending = [deposited];
    let mut samples = Vec::with_capacity(HANDLES);
    for _ in 0..UNITS {
        let t0 = Instant::now();
        let mut instance = new_instance().await?;
        let state = instance
            .apply(open_state, &pending)
            .await
            .map_err(|e| anyhow!("apply: {e}"))?;
        let decision = instance
            .handle(&state, deposit)
            .await
            .map_err(|e| anyhow!("handle: {e}"))?;
        drop(instance);
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        if decision.is_err() {
            bail!("the plugin refused a deposit on an open account: {decision:?}");
        }
    }
    Ok(median_us(&samples))
}
