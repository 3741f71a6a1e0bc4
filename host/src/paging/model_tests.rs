//! Model-based property tests (placeholder).
