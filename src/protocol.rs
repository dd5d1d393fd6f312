//! (module protocol: filled in by its own change.)
