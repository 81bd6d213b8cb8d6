//! Phase 1: commands over HTTP against an in-process host.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::args::BenchArgs;
use crate::stats::{self, CLIENT_THREAD_NAME, CpuSample, CpuUse};

const OPEN_BODY: &str = r#"{"type":"Open","data":{"owner":"bench"}}"#;
const DEPOSIT_BODY: &str = r#"{"type":"Deposit","data":{"amount":1}}"#;
/// Accounts whose state is read back after the run.
const VERIFY_SAMPLE: usize = 64;

/// The id of account `i`.
pub fn account_id(i: usize) -> String {
    format!("acct{i:06}")
}

/// One load phase: `total` commands from all connections.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub commands: usize,
    pub ok: usize,
    pub errors: usize,
    pub first_errors: Vec<String>,
    pub wall: Duration,
    /// Ascending, in µs.
    pub latencies_us: Vec<u32>,
    pub cpu: Option<CpuUse>,
    /// Most server-side connections seen established during the phase.
    pub connections_seen: Option<usize>,
    /// Commits of the store seen during the phase (a lower bound: a watch
    /// channel may fold two quick commits into one change).
    pub commits_seen: usize,
}

impl Load {
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn ms(&self, p: f64) -> f64 {
        f64::from(stats::percentile(&self.latencies_us, p)) / 1000.0
    }
}

/// What phase 1 measured.
pub struct HttpResult {
    pub opens: Load,
    pub deposits: Load,
}

/// The load generator: one client (so one keep-alive connection) per
/// worker, on a runtime of its own so its CPU time can be told apart.
struct Generator {
    runtime: tokio::runtime::Runtime,
    clients: Vec<reqwest::Client>,
    /// Per host, the command URL of each account.
    urls: Arc<Vec<Vec<String>>>,
    /// How a command picks its host among several.
    routing: Routing,
}

/// How commands are spread over several hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    /// Connection `c` talks to host `c % hosts`: any stream's commands reach
    /// any host.
    Connection,
    /// A command goes to host `account % hosts` (a load balancer hashing the
    /// stream id): each stream is written by one host.
    Stream,
}

pub async fn run(args: &BenchArgs, db_dir: &Path, run_no: usize) -> anyhow::Result<HttpResult> {
    let db = db_dir.join(format!("http-{run_no}.db"));
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = args.tuning.host_config(&db.display().to_string(), listen);
    config.plugins_dir = args.plugins.clone().or_else(kiln::default_plugins_dir);
    config.compile_cache_dir = args.compile_cache_dir.clone();
    if config.plugins_dir.is_none() {
        bail!("no plugins: pass --plugins DIR (a directory holding bank_account.wasm)");
    }
    let host = kiln::server::start(config)
        .await
        .context("starting the host")?;
    if host.state.registry.get("bank_account").is_none() {
        host.shutdown().await?;
        bail!("the plugins directory has no bank_account.wasm");
    }
    let base = format!("http://{}", host.addr);
    let result = drive_host(args, &host, &base, run_no).await;
    host.shutdown().await?;
    result
}

async fn drive_host(
    args: &BenchArgs,
    host: &kiln::server::Host,
    base: &str,
    run_no: usize,
) -> anyhow::Result<HttpResult> {
    let head = host.state.store.subscribe_head();
    drive_hosts(
        args,
        &[base.to_string()],
        &[host.addr.port()],
        head,
        Routing::Connection,
        run_no,
    )
    .await
}

/// Open the accounts, warm up, then measure the deposits, with the
/// connections spread round-robin over the hosts at `bases` (several hosts
/// on one database), and check the result through the first one.
pub async fn drive_hosts(
    args: &BenchArgs,
    bases: &[String],
    ports: &[u16],
    head: tokio::sync::watch::Receiver<u64>,
    routing: Routing,
    run_no: usize,
) -> anyhow::Result<HttpResult> {
    let base = bases.first().context("no host to drive")?;
    let generator = Generator::new(args, bases, routing)?;
    let result = generator.phases(args, base, ports, &head, run_no).await;
    generator.runtime.shutdown_background();
    result
}

fn check_clean(load: &Load, what: &str) -> anyhow::Result<()> {
    if load.errors > 0 {
        bail!(
            "{} of {} commands failed during {what}; first: {}",
            load.errors,
            load.commands,
            load.first_errors.join(" | ")
        );
    }
    Ok(())
}

impl Generator {
    /// One client per connection, on a runtime of their own, and the URL of
    /// each account on each host.
    fn new(args: &BenchArgs, bases: &[String], routing: Routing) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads.max(1))
            .thread_name(CLIENT_THREAD_NAME)
            .enable_all()
            .build()
            .context("starting the load generator's runtime")?;
        let clients = (0..args.connections.max(1))
            .map(|_| {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .no_proxy()
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .context("building HTTP clients")?;
        let urls = bases
            .iter()
            .map(|base| {
                (0..args.accounts)
                    .map(|i| format!("{base}/commands/bank_account/{}", account_id(i)))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Generator {
            runtime,
            clients,
            urls: Arc::new(urls),
            routing,
        })
    }

    /// Open the accounts, warm up, measure the deposits, then check the
    /// result through `base`.
    async fn phases(
        &self,
        args: &BenchArgs,
        base: &str,
        ports: &[u16],
        head: &tokio::sync::watch::Receiver<u64>,
        run_no: usize,
    ) -> anyhow::Result<HttpResult> {
        let label = format!("run {run_no}");
        let opens = self
            .load(
                &format!("{label} open"),
                OPEN_BODY,
                0,
                args.accounts,
                ports,
                head,
            )
            .await;
        check_clean(&opens, "opening the accounts")?;
        if args.warmup > 0 {
            let warm = self
                .load(
                    &format!("{label} warm-up"),
                    DEPOSIT_BODY,
                    0,
                    args.warmup,
                    ports,
                    head,
                )
                .await;
            check_clean(&warm, "the warm-up")?;
        }
        let deposits = self
            .load(
                &format!("{label} deposits"),
                DEPOSIT_BODY,
                args.warmup,
                args.commands,
                ports,
                head,
            )
            .await;
        check_clean(&deposits, "the measured deposits")?;
        verify(args, &self.clients[0], base).await?;
        Ok(HttpResult { opens, deposits })
    }

    /// Send commands `first..first + count` (command `i` goes to account
    /// `i % accounts`) from all connections at once; each connection sends
    /// its next command as soon as the previous one is answered.
    async fn load(
        &self,
        label: &str,
        body: &'static str,
        first: usize,
        count: usize,
        ports: &[u16],
        head: &tokio::sync::watch::Receiver<u64>,
    ) -> Load {
        let next = Arc::new(AtomicUsize::new(first));
        let done = Arc::new(AtomicUsize::new(0));
        let end = first + count;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let progress = spawn_progress(label, count, ports, head.clone(), done.clone(), stopped);
        let cpu_before = CpuSample::now();
        let started = Instant::now();
        let workers: Vec<_> = self
            .clients
            .iter()
            .enumerate()
            .map(|(c, client)| {
                let client = client.clone();
                let route = Route {
                    urls: self.urls.clone(),
                    own: c % self.urls.len().max(1),
                    by_stream: self.routing == Routing::Stream,
                };
                let next = next.clone();
                let done = done.clone();
                self.runtime
                    .spawn(worker(client, route, body, next, end, done))
            })
            .collect();
        let mut load = join_workers(workers, count).await;
        load.wall = started.elapsed();
        let cpu_after = CpuSample::now();
        load.cpu = cpu_before.zip(cpu_after).map(|(a, b)| a.until(&b));
        let _ = stop.send(());
        if let Ok((conns, commits)) = progress.await {
            load.connections_seen = conns;
            load.commits_seen = commits;
        }
        // Answers that never came count as errors too.
        load.errors += count.saturating_sub(load.ok + load.errors);
        load.latencies_us.sort_unstable();
        eprintln!(
            "[{label}] {} ok, {} errors in {:.2} s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            load.ok,
            load.errors,
            load.wall.as_secs_f64(),
            load.per_s(),
            load.ms(50.0),
            load.ms(99.0)
        );
        load
    }
}

/// Reports progress on stderr every second until `stopped`: the most
/// server-side connections seen established, and the commits of the store
/// seen meanwhile.
fn spawn_progress(
    label: &str,
    count: usize,
    ports: &[u16],
    mut head: tokio::sync::watch::Receiver<u64>,
    done: Arc<AtomicUsize>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<(Option<usize>, usize)> {
    let label = label.to_string();
    let ports = ports.to_vec();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (Instant::now(), 0usize);
        let mut max_conns = None::<usize>;
        let mut sample_conns = || {
            let established: Option<usize> =
                ports.iter().map(|p| stats::established_on_port(*p)).sum();
            if let Some(c) = established {
                max_conns = Some(max_conns.map_or(c, |m: usize| m.max(c)));
            }
        };
        let mut commits = 0usize;
        let mut head_open = true;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        head.mark_unchanged();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    sample_conns();
                    let now = Instant::now();
                    let n = done.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
                    eprintln!(
                        "[{label}] {n}/{count} in {:.1} s ({rate:.0}/s)",
                        started.elapsed().as_secs_f64()
                    );
                    last = (now, n);
                }
                changed = head.changed(), if head_open => match changed {
                    Ok(()) => commits += 1,
                    // The store closed; keep reporting progress.
                    Err(_) => head_open = false,
                },
            }
        }
        sample_conns();
        (max_conns, commits)
    })
}

/// The workers' counts and latencies, merged; a worker that failed counts
/// as one error.
async fn join_workers(workers: Vec<tokio::task::JoinHandle<WorkerLoad>>, count: usize) -> Load {
    let mut load = Load {
        commands: count,
        ..Load::default()
    };
    for w in workers {
        match w.await {
            Ok(part) => {
                load.ok += part.ok;
                load.errors += part.errors;
                if load.first_errors.len() < 3 {
                    load.first_errors.extend(part.first_errors);
                }
                load.latencies_us.extend(part.latencies_us);
            }
            Err(e) => {
                load.errors += 1;
                load.first_errors.push(format!("a worker failed: {e}"));
            }
        }
    }
    load
}

#[derive(Default)]
struct WorkerLoad {
    ok: usize,
    errors: usize,
    first_errors: Vec<String>,
    latencies_us: Vec<u32>,
}

/// Where a worker sends command `i`.
struct Route {
    urls: Arc<Vec<Vec<String>>>,
    /// The worker's host when routing by connection.
    own: usize,
    by_stream: bool,
}

impl Route {
    fn url(&self, i: usize) -> Option<&str> {
        let hosts = self.urls.len();
        let accounts = self.urls.first()?.len();
        if accounts == 0 {
            return None;
        }
        let account = i % accounts;
        let host = if self.by_stream {
            account % hosts
        } else {
            self.own
        };
        Some(&self.urls[host][account])
    }
}

async fn worker(
    client: reqwest::Client,
    route: Route,
    body: &'static str,
    next: Arc<AtomicUsize>,
    end: usize,
    done: Arc<AtomicUsize>,
) -> WorkerLoad {
    let mut load = WorkerLoad::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(url) = route.url(i).filter(|_| i < end) else {
            break;
        };
        let t0 = Instant::now();
        let answer = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        // The body is read to the end, so the connection is kept alive.
        let outcome = match answer {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(_) if status == reqwest::StatusCode::OK => Ok(()),
                    Ok(bytes) => Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    )),
                    Err(e) => Err(format!("{status}, body unreadable: {e}")),
                }
            }
            Err(e) => Err(format!("request failed: {e}")),
        };
        load.latencies_us
            .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        match outcome {
            Ok(()) => load.ok += 1,
            Err(e) => {
                load.errors += 1;
                if load.first_errors.len() < 3 {
                    load.first_errors.push(e);
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    load
}

/// Check the run really did what was measured: the log holds exactly one
/// event per command, and sampled accounts have the expected balance and
/// version.
async fn verify(args: &BenchArgs, client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deposits = args.warmup + args.commands;
    let expected_head = (args.accounts + deposits) as u64;
    let page: Value = client
        .get(format!(
            "{base}/events?from_position={expected_head}&limit=2"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let positions: Vec<u64> = page["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["position"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    if positions != [expected_head] {
        bail!(
            "verification: expected the log to end at position {expected_head}, found {positions:?} there"
        );
    }
    let step = (args.accounts / VERIFY_SAMPLE).max(1);
    for account in (0..args.accounts).step_by(step) {
        let want = stats::commands_for(account, args.accounts, deposits) as i64;
        let url = format!("{base}/streams/bank_account-{}/state", account_id(account));
        let state: Value = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let balance = state["state"]["balance"].as_i64();
        let version = state["version"].as_i64();
        if balance != Some(want) || version != Some(want + 1) {
            bail!(
                "verification: account {} has balance {balance:?} at version {version:?}, expected {want} at {}",
                account_id(account),
                want + 1
            );
        }
    }
    Ok(())
}
