//! (module logging: filled in by its own change.)
