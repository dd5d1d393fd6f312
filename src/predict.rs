//! (module predict: filled in by its own change.)
