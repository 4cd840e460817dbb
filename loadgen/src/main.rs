fn main() {
    eprintln!("elko-loadgen: not built yet");
    std::process::exit(2);
}
