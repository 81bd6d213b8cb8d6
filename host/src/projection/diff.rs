//! Comparing two generations of a view: which keys only one has, and which
//! values differ, with both values of the keys named. Both are read in key
//! order, page by page, and merged.

use serde::Serialize;
use serde_json::Value;

use crate::store::{StoreError, ViewId, ViewStore};

/// Keys of one kind of difference: how many, and the first few, with
/// their values in each generation.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KeySample {
    pub count: u64,
    /// The keys named, in key order.
    pub sample: Vec<String>,
    /// The same keys with their values: `old` in the first generation, `new`
    /// in the second (`null` where the key is absent).
    pub values: Vec<KeyValues>,
}

/// One named key and its value in each generation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyValues {
    pub key: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl KeySample {
    fn add(&mut self, key: &str, old: Option<&[u8]>, new: Option<&[u8]>, sample_max: usize) {
        self.count += 1;
        if self.sample.len() < sample_max {
            self.sample.push(key.to_string());
            self.values.push(KeyValues {
                key: key.to_string(),
                old: old.map(value_json),
                new: new.map(value_json),
            });
        }
    }
}

/// A stored value as JSON (a value that is not JSON comes back as a string).
pub fn value_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// What differs between an old and a new generation.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ViewDiff {
    pub only_in_old: KeySample,
    pub only_in_new: KeySample,
    pub changed: KeySample,
    pub unchanged: u64,
}

const PAGE_ROWS: u32 = 1_000;

/// A cursor over one generation's rows, a page at a time.
struct Rows<'a> {
    store: &'a dyn ViewStore,
    view: ViewId<'a>,
    page: std::vec::IntoIter<(String, Vec<u8>)>,
    after: Option<String>,
    done: bool,
}

impl<'a> Rows<'a> {
    fn new(store: &'a dyn ViewStore, view: ViewId<'a>) -> Self {
        Self {
            store,
            view,
            page: Vec::new().into_iter(),
            after: None,
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        if let Some(row) = self.page.next() {
            return Ok(Some(row));
        }
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .view_scan(self.view, "", self.after.as_deref(), PAGE_ROWS)
            .await?;
        self.done = page.len() < PAGE_ROWS as usize;
        self.after = page.last().map(|(k, _)| k.clone());
        self.page = page.into_iter();
        Ok(self.page.next())
    }
}

/// Compare two generations, naming up to `sample_max` keys of each kind.
/// Values are compared as JSON when both parse, so formatting does not count.
pub async fn diff_views(
    store: &dyn ViewStore,
    old: ViewId<'_>,
    new: ViewId<'_>,
    sample_max: usize,
) -> Result<ViewDiff, StoreError> {
    let mut diff = ViewDiff::default();
    let mut olds = Rows::new(store, old);
    let mut news = Rows::new(store, new);
    let mut a = olds.next().await?;
    let mut b = news.next().await?;
    loop {
        match (&a, &b) {
            (None, None) => break,
            (Some((ka, va)), None) => {
                diff.only_in_old.add(ka, Some(va), None, sample_max);
                a = olds.next().await?;
            }
            (None, Some((kb, vb))) => {
                diff.only_in_new.add(kb, None, Some(vb), sample_max);
                b = news.next().await?;
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    diff.only_in_old.add(ka, Some(va), None, sample_max);
                    a = olds.next().await?;
                }
                std::cmp::Ordering::Greater => {
                    diff.only_in_new.add(kb, None, Some(vb), sample_max);
                    b = news.next().await?;
                }
                std::cmp::Ordering::Equal => {
                    if same_value(va, vb) {
                        diff.unchanged += 1;
                    } else {
                        diff.changed.add(ka, Some(va), Some(vb), sample_max);
                    }
                    a = olds.next().await?;
                    b = news.next().await?;
                }
            },
        }
    }
    Ok(diff)
}

fn same_value(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{KeyValues, diff_views, same_value};
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{GenerationRecord, GenerationRole, RowWrite, ViewCommit, ViewId, ViewStore};

    #[test]
    fn values_compare_as_json() {
        assert!(same_value(br#"{"a":1,"b":2}"#, br#"{"b": 2, "a": 1}"#));
        assert!(!same_value(br#"{"a":1}"#, br#"{"a":2}"#));
        assert!(!same_value(b"\xff", b"\xfe"));
    }

    /// A diff of two generations read from the store names each sampled key
    /// with its value in both (`null` where it has none); values compare as
    /// JSON, and a value that is not JSON comes back as a string.
    #[tokio::test]
    async fn a_diff_names_both_values_of_sampled_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default())
            .await
            .unwrap();
        let store: &dyn ViewStore = &store;
        let rows = [
            (
                1,
                Vec::from([
                    ("a", r#"{"n":1}"#),
                    ("b", r#"{"n":2}"#),
                    ("c", "raw-1"),
                    ("d", "4"),
                ]),
            ),
            (
                2,
                Vec::from([
                    ("a", r#"{ "n": 1 }"#),
                    ("b", r#"{"n":20}"#),
                    ("c", "raw-2"),
                    ("e", "5"),
                ]),
            ),
        ];
        for (generation, writes) in rows {
            store
                .save_generation(GenerationRecord {
                    name: "diffed".into(),
                    generation,
                    plugin_hash: format!("sha256:{generation}"),
                    role: GenerationRole::Building,
                    position: 0,
                })
                .await
                .unwrap();
            store
                .commit_view(ViewCommit {
                    projection: "diffed".into(),
                    generation,
                    from_position: 0,
                    to_position: 1,
                    writes: writes
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), RowWrite::Put(v.as_bytes().to_vec())))
                        .collect(),
                    skip: None,
                })
                .await
                .unwrap();
        }
        let view = |generation| ViewId {
            projection: "diffed",
            generation,
        };
        let diff = diff_views(store, view(1), view(2), 10).await.unwrap();
        let kv =
            |key: &str, old: Option<serde_json::Value>, new: Option<serde_json::Value>| KeyValues {
                key: key.into(),
                old,
                new,
            };
        assert_eq!(diff.unchanged, 1, "formatting does not count: {diff:?}");
        assert_eq!(diff.changed.count, 2);
        assert_eq!(diff.changed.sample, ["b", "c"]);
        assert_eq!(
            diff.changed.values,
            [
                kv("b", Some(json!({"n": 2})), Some(json!({"n": 20}))),
                kv("c", Some(json!("raw-1")), Some(json!("raw-2"))),
            ]
        );
        assert_eq!(diff.only_in_old.values, [kv("d", Some(json!(4)), None)]);
        assert_eq!(diff.only_in_new.values, [kv("e", None, Some(json!(5)))]);
        // The sample bounds the values named, not the counts.
        let diff = diff_views(store, view(1), view(2), 1).await.unwrap();
        assert_eq!(diff.changed.count, 2);
        assert_eq!(
            diff.changed.values,
            [kv("b", Some(json!({"n": 2})), Some(json!({"n": 20})))]
        );
    }
}
