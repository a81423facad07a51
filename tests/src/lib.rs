//! Shared helpers for privileged tests.
