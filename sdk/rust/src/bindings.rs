//! The one place the Rust SDK binds the WIT contract in `wit/`.
//!
//! Only the `aggregate` world is bound for now. The export macro is public
//! (`pub_export_macro`) so that `export_aggregate!` can call it from a plugin
//! crate, and it has a world-specific name so that the `projection` and `saga`
//! worlds can get `generate!` modules of their own beside this one without
//! their macros clashing. With `pub_export_macro` wit-bindgen emits the custom
//! section that declares the world's exports only where the export macro is
//! called, so a plugin built with this crate exports nothing it did not ask
//! for.

#![allow(
    unsafe_code,
    reason = "wit-bindgen generates the canonical ABI glue, which is unsafe by nature"
)]
#![allow(
    clippy::all,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]

wit_bindgen::generate!({
    // Relative paths are resolved against this crate's CARGO_MANIFEST_DIR.
    // (`concat!(env!(..))` would need wit-bindgen's `macro-string` feature,
    // which is not in the lock file.)
    path: "../../wit",
    world: "aggregate",
    pub_export_macro: true,
    export_macro_name: "export_aggregate_world",
});
