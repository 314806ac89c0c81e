//! `netward`: see `netward --help`.
fn main() -> std::process::ExitCode {
    netward::cli::main()
}
