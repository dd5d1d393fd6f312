//! (module pool: filled in by its own change.)
