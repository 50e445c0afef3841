//! The `herald` binary: parses the command line, loads config, and calls
//! into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `EX_USAGE` from sysexits.h: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Kafka-backed fan-out to browsers and services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Herald against a Kafka cluster.
    Serve {
        /// The TOML config file (`config/herald.toml` lists every key).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `http.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides `kafka.brokers`.
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Validate a config file and exit (64 when invalid).
    Check {
        /// The TOML config file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Web Push tools.
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
    /// Run with an embedded Kafka, sample routes and a demo page.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Interval of the sample records produced to `news` (0 disables).
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        ticker: Duration,
    },
}

#[derive(Subcommand)]
enum PushCommand {
    /// Write a new VAPID key pair (the private key, PKCS#8 PEM, mode 0600)
    /// and print its public key. Never overwrites a file.
    Keygen {
        /// The file to create (for `push.vapid_private_key_file`).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            init_logs(LogFormat::Text);
            match Config::load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("herald: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Serve {
            config: path,
            listen,
            brokers,
        } => {
            // The same at start and on every SIGHUP (a reload).
            let load = move || -> Result<Config, String> {
                let mut config = Config::load(&path).map_err(|e| e.to_string())?;
                if let Some(listen) = listen {
                    config.http.listen = listen;
                }
                if let Some(brokers) = &brokers {
                    config.kafka.brokers = brokers.clone();
                }
                config.validate().map_err(|e| e.to_string())?;
                Ok(config)
            };
            let config = match load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("herald: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Logs take the format of the config that was just read; what
            // went wrong before that went to stderr as plain text.
            init_logs(config.log.format);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                listen = %config.http.listen,
                brokers = %config.kafka.brokers,
                "herald starting"
            );
            runtime(|shutdown| async move {
                herald::run(config, shutdown, load)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        Command::Push {
            command: PushCommand::Keygen { out },
        } => {
            init_logs(LogFormat::Text);
            let written = herald::push::keys::VapidKeys::generate().and_then(|keys| {
                keys.write_new(&out)?;
                Ok(keys)
            });
            match written {
                Ok(keys) => {
                    println!("{}: VAPID private key written", out.display());
                    println!("public key: {}", keys.public_key_base64());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("herald: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev { listen, ticker } => runtime(|shutdown| async move {
            init_logs(LogFormat::Text);
            herald::dev::run(listen, ticker, shutdown)
                .await
                .map_err(|e| e.to_string())
        }),
    }
}

/// Logs go to stderr (stdout is for what a command prints: `check`'s
/// verdict, `push keygen`'s key): text coloured only for a person at a
/// terminal, never into a file or a log collector; or one JSON object per
/// line (`log.format = "json"`), with the event's fields at the top level
/// beside `timestamp`, `level`, `target` and `message`. `RUST_LOG` filters
/// either (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        herald::shutdown::on_signal(shutdown.clone());
        f(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}
