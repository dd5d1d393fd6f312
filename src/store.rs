//! (module store: filled in by its own change.)
