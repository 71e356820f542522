//! Shared helpers for pinflow integration tests.
