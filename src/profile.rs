//! (module profile: filled in by its own change.)
