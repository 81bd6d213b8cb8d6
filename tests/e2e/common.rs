//! A host on a real loopback socket, in this process, on a fresh SQLite file
//! (or on a PostgreSQL database of a test's own, `kiln_testkit::ScratchDatabase`),
//! and the requests tests make of it.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

pub use kiln_plugin_artifacts as artifacts;

/// The admin token test hosts use.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// A short plugin time limit keeps the spin fixture's test fast.
pub const TEST_COMMAND_TIMEOUT_MS: u64 = 500;

/// A running host and a client for it.
pub struct TestHost {
    host: Option<kiln::server::Host>,
    pub base: String,
    pub client: reqwest::Client,
    /// Holds the database and plugin directory until the test ends.
    _dir: tempfile::TempDir,
    config: kiln::server::HostConfig,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// Assert the status and, for an error, the code; return self.
    #[track_caller]
    pub fn expect(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        if !code.is_empty() {
            assert_eq!(self.code(), code, "unexpected code; body: {}", self.body);
            assert!(
                !self.message().is_empty(),
                "error without a message: {}",
                self.body
            );
        }
        self
    }
}

impl TestHost {
    /// The example plugins plus the fixtures (all but the one that fits no
    /// world), loaded from a plugin directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A host whose plugin directory holds exactly `plugins`: (component
    /// file, plugin name it is deployed as).
    pub async fn start_with_plugins(
        plugins: &[(&str, &str)],
        tune: impl FnOnce(&mut kiln::server::HostConfig),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir).expect("plugins dir");
        for (file, name) in plugins {
            std::fs::copy(file, plugin_dir.join(format!("{name}.wasm")))
                .unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
        Self::start_in(dir, plugin_dir, tune).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut kiln::server::HostConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("plugins dir");
        for file in [
            artifacts::BANK_ACCOUNT,
            artifacts::WORKFLOW_EXECUTION,
            artifacts::ACCOUNT_BALANCES,
            artifacts::EXECUTIONS_BY_STATUS,
            artifacts::FIXTURE_PANIC,
            artifacts::FIXTURE_SPIN,
            artifacts::FIXTURE_OOM,
            artifacts::FIXTURE_OVERSIZE,
            artifacts::FIXTURE_SNOOP,
        ] {
            copy_into(Path::new(file), &plugins);
        }
        Self::start_in(dir, plugins, tune).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        plugins: std::path::PathBuf,
        tune: impl FnOnce(&mut kiln::server::HostConfig),
    ) -> Self {
        let db = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let mut config = kiln::server::HostConfig::new(db, "127.0.0.1:0".parse().expect("addr"));
        config.plugins_dir = Some(plugins);
        config.admin_token = Some(ADMIN_TOKEN.to_string());
        config.limits.command_timeout_ms = TEST_COMMAND_TIMEOUT_MS;
        tune(&mut config);
        let host = kiln::server::start(config.clone())
            .await
            .expect("host starts");
        Self {
            base: format!("http://{}", host.addr),
            host: Some(host),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            _dir: dir,
            config,
        }
    }

    /// The running host.
    pub fn host(&self) -> &kiln::server::Host {
        self.host.as_ref().expect("the host is running")
    }

    /// The plugin directory the host loads and watches.
    pub fn plugins_dir(&self) -> &Path {
        self.config
            .plugins_dir
            .as_deref()
            .expect("a plugin directory")
    }

    /// The URL of the host's database.
    pub fn db_url(&self) -> &str {
        &self.config.db
    }

    /// Stop gracefully and start again on the same database and plugins.
    pub async fn restart(&mut self) {
        self.stop().await;
        let host = kiln::server::start(self.config.clone())
            .await
            .expect("host restarts");
        self.base = format!("http://{}", host.addr);
        self.host = Some(host);
    }

    pub async fn stop(&mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await.expect("clean shutdown");
        }
    }

    /// `POST /commands/{aggregate}/{id}` with a JSON body.
    pub async fn command(&self, aggregate: &str, id: &str, body: Value) -> Answer {
        self.command_with(aggregate, id, body, &[]).await
    }

    pub async fn command_with(
        &self,
        aggregate: &str,
        id: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .post(format!("{}/commands/{aggregate}/{id}", self.base))
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        answer(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        answer(req.send().await.expect("request")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Upload `bytes` as the new version of plugin `name` (admin).
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Answer {
        self.send(
            self.client
                .put(self.url(&format!("/plugins/{name}")))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/wasm")
                .body(bytes),
        )
        .await
    }

    /// A host whose plugin directory holds `plugins` (component file, name),
    /// JavaScript or Python ones among them, with the compile cache every
    /// such host of this run shares (a 10–20 MB component compiles in
    /// 10–20 s, once). Returns once every plugin is loaded.
    pub async fn start_polyglot(plugins: &[(&str, &str)]) -> Self {
        // One host at a time compiles: the others then load from the cache
        // instead of compiling the same component beside it.
        let _one_at_a_time = POLYGLOT_START.lock().await;
        let cache = shared_compile_cache();
        let host = Self::start_with_plugins(plugins, |c| c.compile_cache_dir = Some(cache)).await;
        for (_, name) in plugins {
            host.wait_for_plugin(name, Duration::from_secs(300)).await;
        }
        host
    }

    /// Wait until `GET /plugins` lists `name` as ready with nothing
    /// compiling; its entry.
    pub async fn wait_for_plugin(&self, name: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let list = self.get("/plugins").await;
            let entry = list.body.as_array().and_then(|all| {
                all.iter()
                    .find(|p| {
                        p["name"] == name && p["status"] == "ready" && p["compiling"].is_null()
                    })
                    .cloned()
            });
            if let Some(entry) = entry {
                return entry;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "plugin {name} not ready after {timeout:?}: {}",
                list.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The balance of bank account `id` (its state must be readable).
    pub async fn balance(&self, id: &str) -> i64 {
        let a = self.get(&format!("/streams/bank_account-{id}/state")).await;
        a.expect(200, "");
        a.body["state"]["balance"].as_i64().unwrap_or(i64::MIN)
    }

    /// Poll instance `id` of `saga` until its status is `status` (or fail
    /// after 20 s); the instance.
    pub async fn wait_saga(&self, saga: &str, id: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let a = self.get(&format!("/sagas/{saga}/{id}")).await;
            if a.status == 200 && a.body["status"] == status {
                return a.body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "saga {saga} instance {id} is not {status}: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

static POLYGLOT_START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `<target>/test-compile-cache`: compiled components kept across the
/// tests of a run and across runs (keyed by content and engine settings).
///
/// A JavaScript or Python component's compiled form is ~35 MB and a rebuilt
/// component (its bytes are not reproducible) gets a new one, so entries
/// older than [`SHARED_CACHE_DAYS`] are removed the first time a test
/// process uses the cache.
pub fn shared_compile_cache() -> std::path::PathBuf {
    static PRUNED: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(artifacts::EXAMPLES_DIR)
        .parent()
        .expect("the plugins directory sits in the target directory")
        .join("test-compile-cache");
    PRUNED.call_once(|| prune_older_than(&dir, SHARED_CACHE_DAYS));
    dir
}

/// How long an entry of the shared compile cache is kept.
pub const SHARED_CACHE_DAYS: u64 = 3;

fn prune_older_than(dir: &Path, days: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let max_age = Duration::from_secs(days * 24 * 3600);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if self.host.is_some() {
            eprintln!("TestHost dropped without stop(); the runtime's shutdown closes it");
        }
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn copy_into(file: &Path, dir: &Path) {
    let name = file.file_name().expect("file name");
    std::fs::copy(file, dir.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
}

/// The JSON body of a command.
pub fn cmd(command_type: &str, data: Value) -> Value {
    serde_json::json!({ "type": command_type, "data": data })
}
