//! `jetmesh`: parses arguments and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `jetmesh submit --json | head` should end quietly like any Unix tool,
    // not panic on a closed pipe.
    // SAFETY: restores the default disposition of SIGPIPE before any thread
    // starts; no handler of ours is replaced.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = jetmesh::Cli::parse();
    let outcome = jetmesh::load_config(&cli).and_then(|config| {
        // The config sizes the runtime, so it is read before the runtime starts.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(jetmesh::worker_threads(&cli, &config))
            .enable_all()
            .build()?;
        runtime.block_on(jetmesh::main(cli, config))
    });
    match outcome {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
