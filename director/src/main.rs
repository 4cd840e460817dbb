fn main() {
    eprintln!("elko-director: not built yet");
    std::process::exit(2);
}
