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
    use super::same_value;

    #[test]
    fn values_compare_as_json() {
        assert!(same_value(br#"{"a":1,"b":2}"#, br#"{"b": 2, "a": 1}"#));
        assert!(!same_value(br#"{"a":1}"#, br#"{"a":2}"#));
        assert!(!same_value(b"\xff", b"\xfe"));
    }
}
