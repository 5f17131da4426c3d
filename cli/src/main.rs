//! `skewguard`: see and steer skewguard from a terminal.

use clap::Parser;
use skewguard_cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok((text, failed)) => {
            anstream::print!("{text}");
            if failed {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            anstream::eprintln!("skewguard: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
