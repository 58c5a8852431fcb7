fn main() -> std::process::ExitCode {
    workbusd::main()
}
