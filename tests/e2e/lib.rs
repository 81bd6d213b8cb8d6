//! Shared helpers live in e2e/common.
