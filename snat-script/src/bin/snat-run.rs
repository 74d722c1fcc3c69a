//! `snat-run`: see [`snat_script::cli`].

fn main() -> std::process::ExitCode {
    snat_script::cli::main()
}
