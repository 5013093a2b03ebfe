//! Process exit codes shared by both binaries (sysexits.h).

/// Invalid command line or configuration (`EX_USAGE`).
pub const USAGE: i32 = 64;
/// A required service was unavailable at start-up (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: i32 = 69;
/// Internal software error (`EX_SOFTWARE`).
pub const SOFTWARE: i32 = 70;
