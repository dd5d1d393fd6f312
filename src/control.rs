//! (module control: filled in by its own change.)
