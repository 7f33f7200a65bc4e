//! The GPU runner (filled in by the runner issue).
