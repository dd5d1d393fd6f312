//! (module partition: filled in by its own change.)
