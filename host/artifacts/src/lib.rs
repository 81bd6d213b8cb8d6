//! Paths of the example and fixture plugins, and the builds that make them.
//!
//! Building this crate needs Rust only. Its build script runs a nested
//! `cargo build --profile plugin --target wasm32-wasip2` of the Rust plugin
//! crates (the workspace members with `[package.metadata.kiln] kind =
//! "example"` or `"fixture"`, adding the target with rustup if needed) and
//! copies the components to:
//!
//! - [`EXAMPLES_DIR`] (`<target>/plugins/`): the aggregates
//!   `bank_account.wasm`, `workflow_execution.wasm` and `transfer.wasm`, the
//!   projections `account_balances.wasm` and `executions_by_status.wasm`,
//!   and the saga `transfer_saga.wasm`;
//! - [`FIXTURES_DIR`] (`<target>/plugins/fixtures/`): the `fixture_*.wasm`
//!   components the host's tests use, misbehaving aggregates, projections
//!   (`fixture_poison`) and sagas (`fixture_saga_trap`), a second version of
//!   a projection (`fixture_balances_v2`), a bank whose deposits to some
//!   accounts trap (`fixture_flaky_bank`) and a saga that compensates
//!   several steps (`fixture_three_steps`).
//!
//! The JavaScript and Python plugins (`plugins/*_js`, `plugins/*_py` and
//! their fixtures) are built by the tests that use them, on the first call
//! of their function ([`bank_account_js`], [`bank_account_py`],
//! [`account_balances_py`], [`fixture_throw_js`], [`fixture_raise_py`]),
//! which installs node's or Python's toolchain under `<target>/polyglot/`
//! the first time (see [`polyglot`]). Their examples go to [`JAVASCRIPT_DIR`]
//! and [`PYTHON_DIR`] under their usual names, so either directory can stand
//! in for the Rust one.
//!
//! `<target>` is `$CARGO_TARGET_DIR` when set, else the workspace's `target/`.
//! The file stem of each component is the plugin name the host uses.
//!
//! Every fixture must have a test. A test module enforces it with
//! [`foreach_fixture!`], which calls a macro once per fixture (its crate or
//! directory name):
//!
//! ```
//! macro_rules! assert_test_exists {
//!     ($name:ident) => {
//!         #[allow(unused_imports, reason = "the import only checks the test exists")]
//!         use self::$name as _;
//!     };
//! }
//! kiln_plugin_artifacts::foreach_fixture!(assert_test_exists);
//!
//! fn fixture_panic() {}
//! fn fixture_spin() {}
//! fn fixture_oom() {}
//! fn fixture_oversize() {}
//! fn fixture_snoop() {}
//! fn fixture_no_world() {}
//! fn fixture_poison() {}
//! fn fixture_balances_v2() {}
//! fn fixture_three_steps() {}
//! fn fixture_flaky_bank() {}
//! fn fixture_saga_trap() {}
//! fn fixture_throw_js() {}
//! fn fixture_raise_py() {}
//! # fn main() {
//! #     assert!(std::path::Path::new(kiln_plugin_artifacts::FIXTURE_PANIC).is_file());
//! # }
//! ```

pub mod polyglot;

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const EXAMPLES: [&str; 6] = [
        BANK_ACCOUNT,
        WORKFLOW_EXECUTION,
        ACCOUNT_BALANCES,
        EXECUTIONS_BY_STATUS,
        TRANSFER,
        TRANSFER_SAGA,
    ];

    const ALL: [&str; 17] = [
        BANK_ACCOUNT,
        WORKFLOW_EXECUTION,
        ACCOUNT_BALANCES,
        EXECUTIONS_BY_STATUS,
        FIXTURE_PANIC,
        FIXTURE_SPIN,
        FIXTURE_OOM,
        FIXTURE_OVERSIZE,
        FIXTURE_SNOOP,
        FIXTURE_NO_WORLD,
        FIXTURE_POISON,
        FIXTURE_BALANCES_V2,
        TRANSFER,
        TRANSFER_SAGA,
        FIXTURE_THREE_STEPS,
        FIXTURE_FLAKY_BANK,
        FIXTURE_SAGA_TRAP,
    ];

    const AGGREGATES: [&str; 4] = [
        BANK_ACCOUNT,
        WORKFLOW_EXECUTION,
        TRANSFER,
        FIXTURE_FLAKY_BANK,
    ];

    const PROJECTIONS: [&str; 4] = [
        ACCOUNT_BALANCES,
        EXECUTIONS_BY_STATUS,
        FIXTURE_POISON,
        FIXTURE_BALANCES_V2,
    ];

    const SAGAS: [&str; 3] = [TRANSFER_SAGA, FIXTURE_THREE_STEPS, FIXTURE_SAGA_TRAP];

    #[test]
    fn every_component_exists_and_is_a_component() {
        for path in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // A component's preamble: magic, then version 0x0d and layer 1.
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\0\x01\0",
                "{path} is not a component"
            );
        }
    }

    fn contains(bytes: &[u8], needle: &str) -> bool {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    }

    /// The SDK binds several worlds; a component must get only the world
    /// its crate exports. The names of a component's imports and exports are
    /// plain strings in its binary.
    #[test]
    fn aggregates_projections_and_sagas_have_their_own_world() {
        for path in AGGREGATES {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            for name in ["handle", "apply"] {
                assert!(contains(&bytes, name), "{path} does not mention {name}");
            }
            for name in [
                "kiln:plugin/view",
                "handle-batch",
                "subscriptions",
                "correlate",
                "on-failure",
            ] {
                assert!(!contains(&bytes, name), "{path} mentions {name}");
            }
        }
        for path in PROJECTIONS {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            for name in ["kiln:plugin/view@0.1.0", "handle-batch", "subscriptions"] {
                assert!(contains(&bytes, name), "{path} does not mention {name}");
            }
            for name in ["correlate", "on-failure"] {
                assert!(!contains(&bytes, name), "{path} mentions {name}");
            }
        }
        for path in SAGAS {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            for name in [
                "subscriptions",
                "correlate",
                "react",
                "on-failure",
                "on-timer",
            ] {
                assert!(contains(&bytes, name), "{path} does not mention {name}");
            }
            for name in ["kiln:plugin/view", "handle-batch"] {
                assert!(!contains(&bytes, name), "{path} mentions {name}");
            }
        }
    }

    #[test]
    fn components_sit_in_their_directories() {
        for path in EXAMPLES {
            assert_eq!(Path::new(path).parent(), Some(Path::new(EXAMPLES_DIR)));
        }
        let mut examples = 0;
        macro_rules! count {
            ($name:ident) => {
                examples += 1;
            };
        }
        foreach_example!(count);
        assert_eq!(examples, EXAMPLES.len());
        let mut fixtures = 0;
        macro_rules! check {
            ($name:ident) => {
                fixtures += 1;
                let path = Path::new(FIXTURES_DIR).join(concat!(stringify!($name), ".wasm"));
                assert!(path.is_file(), "{}", path.display());
            };
        }
        foreach_fixture!(check);
        assert_eq!(fixtures, 13);
    }

    /// The JavaScript and Python builds, and where they sit: each language
    /// has a directory of its own holding the examples under their usual
    /// names, so `kiln serve --plugins <dir>` runs them in place of the Rust
    /// ones. Asking for a component builds it.
    #[test]
    fn javascript_and_python_components_are_components_in_their_directories() {
        for (path, dir) in [
            (bank_account_js(), JAVASCRIPT_DIR),
            (bank_account_py(), PYTHON_DIR),
            (account_balances_py(), PYTHON_DIR),
            (fixture_throw_js(), FIXTURES_DIR),
            (fixture_raise_py(), FIXTURES_DIR),
        ] {
            assert_eq!(Path::new(path).parent(), Some(Path::new(dir)));
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\0\x01\0",
                "{path} is not a component"
            );
        }
        for path in [bank_account_js(), bank_account_py()] {
            assert!(path.ends_with("/bank_account.wasm"), "{path}");
        }
        assert!(polyglot::python().expect("python").is_file());
        assert!(polyglot::node_modules().expect("node_modules").is_dir());
    }

    /// The plugin lists come from the workspace: every member with kiln
    /// metadata, every `package.json`/`pyproject.toml` with a kiln table.
    #[test]
    fn the_plugin_lists_are_read_from_the_workspace() {
        let mut ids: Vec<&str> = POLYGLOT_PLUGINS.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "account_balances_py",
                "bank_account_js",
                "bank_account_py",
                "fixture_raise_py",
                "fixture_throw_js"
            ]
        );
        let fixtures: Vec<&str> = POLYGLOT_PLUGINS
            .iter()
            .filter(|p| p.fixture)
            .map(|p| p.id)
            .collect();
        assert_eq!(fixtures, ["fixture_raise_py", "fixture_throw_js"]);
        // Nothing built yet is needed to know where a component goes.
        assert!(POLYGLOT_PLUGINS[0].component_path.ends_with(".wasm"));
    }
}
