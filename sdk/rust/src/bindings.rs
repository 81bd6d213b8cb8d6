//! The one place the Rust SDK binds the WIT contract in `wit/`.
//!
//! Each world the SDK supports gets a `generate!` module of its own:
//! [`aggregate`], [`projection`] and [`saga`]. Their export macros are public
//! (`pub_export_macro`) so that `export_aggregate!`, `export_projection!` and
//! `export_saga!` can call them from a plugin crate, and they have
//! world-specific names so that they do not clash.
//!
//! With `pub_export_macro` wit-bindgen emits the custom section that declares
//! a world's exports only where its export macro is called; the sections for
//! the imports of every world are always linked in, but `wit-component` drops
//! the imports a plugin does not call. So a plugin built with this crate
//! exports only the world it asked for and imports only what it uses (an
//! aggregate does not import `view`).

#![allow(
    unsafe_code,
    reason = "wit-bindgen generates the canonical ABI glue, which is unsafe by nature"
)]
#![allow(
    clippy::all,
    clippy::allow_attributes_without_reason,
    reason = "generated code"
)]

/// The `aggregate` world: exports `apply` and `handle`, imports `log`.
pub mod aggregate {
    wit_bindgen::generate!({
        // Relative paths are resolved against this crate's CARGO_MANIFEST_DIR.
        // (`concat!(env!(..))` would need wit-bindgen's `macro-string` feature,
        // which is not in the lock file.)
        path: "../../wit",
        world: "aggregate",
        pub_export_macro: true,
        export_macro_name: "export_aggregate_world",
    });
}

/// The `projection` world: exports `subscriptions` and `handle-batch`,
/// imports `log` and `view`.
pub mod projection {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "projection",
        pub_export_macro: true,
        export_macro_name: "export_projection_world",
    });
}

/// The `saga` world: exports `subscriptions`, `correlate`, `react`,
/// `on-failure` and `on-timer`, imports `log`.
///
/// Its `types` and `log` interfaces are the [`aggregate`] module's (`with`),
/// so a type such as `event` or `failure` has one Rust type for both worlds.
pub mod saga {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "saga",
        pub_export_macro: true,
        export_macro_name: "export_saga_world",
        with: {
            "kiln:plugin/types@0.1.0": crate::bindings::aggregate::kiln::plugin::types,
            "kiln:plugin/log@0.1.0": crate::bindings::aggregate::kiln::plugin::log,
        },
    });
}
