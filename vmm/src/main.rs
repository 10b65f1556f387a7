//! `strait`: set up logging, run the command, print the outcome or the error chain as one
//! line, and exit with the code of its class (see `vmm::error::ExitCode`); `check` exits
//! with its report's code (0 OK, 1 WARN, 2 FAIL).

use std::io::Write;

use clap::Parser;
use vmm::cli::{self, Cli, Outcome};
use vmm::error::ExitCode;
use vmm::logger;
use vmm::vm::GuestExit;

fn main() -> std::process::ExitCode {
    logger::init(log::LevelFilter::Info);
    let cli = Cli::parse();
    log::set_max_level(logger::level_for(cli.verbose, cli.quiet));
    match cli::execute(&cli) {
        Ok(Outcome::Valid(lines)) => {
            for line in lines {
                #[allow(clippy::print_stdout)] // validate's report is the command's output
                {
                    println!("{line}");
                }
            }
            log::info!("spec and host are ready");
            ExitCode::Success.into()
        }
        Ok(Outcome::Checked { report, json }) => {
            let text = if json {
                format!("{:#}\n", report.to_json())
            } else {
                report.lines().iter().map(|l| format!("{l}\n")).collect()
            };
            // A reader that stops early (`| head`) is not an error of the check.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            std::process::ExitCode::from(report.exit_code())
        }
        Ok(Outcome::Planned { plan, json }) => {
            let text = if json {
                format!("{:#}\n", plan.to_json())
            } else {
                plan.to_string()
            };
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::Success.into()
        }
        Ok(Outcome::Ctl(answer)) => {
            let text = format!("{}\n", vmm::api::client::pretty(&answer.body));
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            if (200..300).contains(&answer.status) {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("strait: ctl: the API answered {}", answer.status);
                std::process::ExitCode::from(1)
            }
        }
        Ok(Outcome::Ran(exit)) => {
            match exit {
                GuestExit::PowerOff => log::info!("guest powered off"),
                GuestExit::Reboot(how) => {
                    log::info!("guest requested reboot ({how}); lifecycle.on_reboot is \"exit\"")
                }
            }
            exit.exit_code().into()
        }
        Err(e) => {
            eprintln!("strait: {}", e.one_line());
            e.exit_code().into()
        }
    }
}
