//! The `view` import a projection writes through, as the runtime sees it:
//! a [`ViewAccess`] the caller of a batch provides. What a view is made of
//! (rows, caches, the store) is the projection side's business
//! (`crate::projection::view`).

use std::any::Any;

use async_trait::async_trait;

/// One batch's access to a view. An error is the message the plugin's call
/// fails with (a trap).
#[async_trait]
pub trait ViewAccess: Any + Send {
    /// One row, as this batch sees it.
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String>;

    /// Write a row (refused when over the size limit).
    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String>;

    /// Delete a row.
    fn delete(&mut self, key: String);

    /// Up to `limit` rows whose key starts with `prefix` and sorts after
    /// `after`, in key order, as this batch sees them.
    async fn scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, String>;
}

/// The session given to a batch, back as the type it was given as.
pub(super) fn take_back<V: ViewAccess>(view: Option<Box<dyn ViewAccess>>) -> V {
    let view: Box<dyn Any> = view.expect("the session stays in the store for the whole call");
    *view
        .downcast::<V>()
        .unwrap_or_else(|_| unreachable!("a batch's view comes back as the type it was given as"))
}
