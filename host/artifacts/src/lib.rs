//! Paths of the example and fixture plugins, built into wasm32-wasip2
//! components by this crate's build script.
//!
//! Building this crate runs a nested `cargo build --profile plugin --target
//! wasm32-wasip2` of the plugin crates in `plugins/` (adding the target with
//! rustup if needed) and copies the components to:
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
//! `<target>` is `$CARGO_TARGET_DIR` when set, else the workspace's `target/`.
//! The file stem of each component is the plugin name the host uses.
//!
//! Every fixture must have a test. A test module enforces it with
//! [`foreach_fixture!`], which calls a macro once per fixture crate name:
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
    /// ones.
    #[test]
    fn javascript_and_python_components_are_components_in_their_directories() {
        for (path, dir) in [
            (BANK_ACCOUNT_JS, JAVASCRIPT_DIR),
            (BANK_ACCOUNT_PY, PYTHON_DIR),
            (ACCOUNT_BALANCES_PY, PYTHON_DIR),
            (FIXTURE_THROW_JS, FIXTURES_DIR),
            (FIXTURE_RAISE_PY, FIXTURES_DIR),
        ] {
            assert_eq!(Path::new(path).parent(), Some(Path::new(dir)));
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\0\x01\0",
                "{path} is not a component"
            );
        }
        for path in [BANK_ACCOUNT_JS, BANK_ACCOUNT_PY] {
            assert!(path.ends_with("/bank_account.wasm"), "{path}");
        }
        assert!(Path::new(PYTHON).is_file(), "{PYTHON}");
        assert!(Path::new(NODE_MODULES).is_dir(), "{NODE_MODULES}");
    }
}
