fn main() -> std::process::ExitCode {
    workbusctl::main()
}
