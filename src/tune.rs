//! (module tune: filled in by its own change.)
