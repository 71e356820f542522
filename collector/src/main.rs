//! The `pinflow` command: everything it does is in [`pinflow::commands`].

fn main() -> std::process::ExitCode {
    pinflow::commands::main()
}
