//! A compiled plugin: its identity (name, content hash), its kind, detected
//! from its exports, and its code ready to instantiate.

use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, types::ComponentItem};

use super::bindings::aggregate::AggregatePre;
use super::bindings::projection::ProjectionPre;
use super::bindings::saga::SagaPre;
use super::sandbox::PluginState;

/// The three plugin worlds of `wit/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Aggregate,
    Projection,
    Saga,
}

impl PluginKind {
    /// The exports that make a component fit this world.
    fn required_exports(self) -> &'static [&'static str] {
        match self {
            PluginKind::Aggregate => &["apply", "handle"],
            PluginKind::Projection => &["subscriptions", "handle-batch"],
            PluginKind::Saga => &[
                "subscriptions",
                "correlate",
                "react",
                "on-failure",
                "on-timer",
            ],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Aggregate => "aggregate",
            PluginKind::Projection => "projection",
            PluginKind::Saga => "saga",
        }
    }

    /// The kind with its article, for messages: "an aggregate", "a saga".
    pub fn with_article(self) -> &'static str {
        match self {
            PluginKind::Aggregate => "an aggregate",
            PluginKind::Projection => "a projection",
            PluginKind::Saga => "a saga",
        }
    }
}

const KINDS: [PluginKind; 3] = [
    PluginKind::Aggregate,
    PluginKind::Projection,
    PluginKind::Saga,
];

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component.
    ///
    /// Handling: 400 `invalid_request`.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A valid component that fits no plugin world, or fits one badly.
    ///
    /// Handling: 422 `invalid_plugin`; the message names what is missing.
    #[error("{0}")]
    Invalid(String),
}

/// Code of one component, ready to instantiate: what plugins deployed from
/// the same bytes share (see `shelf.rs`).
pub struct SharedCode {
    pub kind: PluginKind,
    pub code: PluginCode,
}

/// Code ready to run.
#[derive(Clone)]
pub enum PluginCode {
    /// An aggregate, with its imports resolved once.
    Aggregate(AggregatePre<PluginState>),
    /// A projection, with its imports resolved once.
    Projection(ProjectionPre<PluginState>),
    /// A saga, with its imports resolved once.
    Saga(SagaPre<PluginState>),
}

/// A loaded plugin version.
#[derive(Clone)]
pub struct Plugin {
    pub name: Arc<str>,
    /// `sha256:<hex>` of the component bytes.
    pub hash: String,
    pub kind: PluginKind,
    pub size: usize,
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    pub code: PluginCode,
    /// The compiled code, shared with every plugin of the same bytes.
    pub(crate) shared: Arc<SharedCode>,
}

impl Plugin {
    pub(crate) fn new(name: &str, hash: String, size: usize, shared: Arc<SharedCode>) -> Self {
        Self {
            name: Arc::from(name),
            hash,
            kind: shared.kind,
            size,
            loaded_at: chrono::Utc::now(),
            code: shared.code.clone(),
            shared,
        }
    }

    /// Whether `self` and `other` run the very same compiled code (one
    /// copy in memory).
    pub fn shares_code_with(&self, other: &Plugin) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// `sha256:<hex>` of some bytes: the identity of a plugin version.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Refuse bytes that are not a component before handing them to the
/// compiler, with a message that says what they are instead.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent(
            "the bytes do not start with the WebAssembly magic number".into(),
        ));
    }
    // Bytes 4..8: version and layer. Layer 0 is a core module, 1 a component.
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::NotAComponent(
            "this is a core WebAssembly module; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)".into(),
        ));
    }
    Ok(())
}

/// The kind of a component, from the functions it exports. A component that
/// fits no world is refused with a message naming what is missing.
pub(crate) fn detect_kind(engine: &Engine, component: &Component) -> Result<PluginKind, LoadError> {
    let ty = component.component_type();
    let exports: Vec<(String, bool)> = ty
        .exports(engine)
        .map(|(name, item)| {
            (
                name.to_string(),
                matches!(item.ty, ComponentItem::ComponentFunc(_)),
            )
        })
        .collect();
    let has = |name: &str| exports.iter().any(|(n, is_func)| n == name && *is_func);
    if let Some(kind) = KINDS
        .iter()
        .copied()
        .find(|k| k.required_exports().iter().all(|e| has(e)))
    {
        return Ok(kind);
    }
    let found: Vec<&str> = exports.iter().map(|(n, _)| n.as_str()).collect();
    let found = if found.is_empty() {
        "nothing".to_string()
    } else {
        found.join(", ")
    };
    // Name the world the component comes closest to, and what it lacks.
    let closest = KINDS
        .iter()
        .copied()
        .max_by_key(|k| k.required_exports().iter().filter(|e| has(e)).count())
        .filter(|k| k.required_exports().iter().any(|e| has(e)));
    let needs = KINDS
        .iter()
        .map(|k| format!("{} needs {}", k.as_str(), quoted(k.required_exports())))
        .collect::<Vec<_>>()
        .join("; ");
    let mut message = format!("the component fits no Kiln plugin world: it exports {found}");
    if let Some(kind) = closest {
        let missing: Vec<&str> = kind
            .required_exports()
            .iter()
            .copied()
            .filter(|e| !has(e))
            .collect();
        message.push_str(&format!(
            "; as {} {} it is missing {}",
            article(kind),
            kind.as_str(),
            quoted(&missing)
        ));
    }
    message.push_str(&format!(" (an {needs})"));
    Err(LoadError::Invalid(message))
}

fn article(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Aggregate => "an",
        _ => "a",
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_tells_core_modules_from_components() {
        assert!(matches!(
            check_header(b"hello"),
            Err(LoadError::NotAComponent(_))
        ));
        let core = b"\0asm\x01\0\0\0";
        let err = check_header(core).unwrap_err().to_string();
        assert!(err.contains("core WebAssembly module"), "{err}");
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn content_hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
