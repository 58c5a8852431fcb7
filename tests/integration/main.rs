//! End-to-end tests against the real binaries on temporary buses. One test
//! binary (as ripgrep does) so the suite links once.

mod cli;
mod durability;
mod end_to_end;
mod fleet;
mod shipped;
mod system;
mod util;
