//! (module alloc: filled in by its own change.)
