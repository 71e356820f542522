//! The `pinflow` command.
fn main() {}
