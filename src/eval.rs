//! (module eval: filled in by its own change.)
