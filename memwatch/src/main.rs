fn main() -> std::process::ExitCode {
    memwatch::cli::main()
}
