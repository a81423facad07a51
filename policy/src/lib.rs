//! NetworkPolicy semantics (pure).
