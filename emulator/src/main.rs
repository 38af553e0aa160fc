//! `ldsync-emulator`: the LaunchDarkly emulator as a server a person can start by hand, to try ldsync without an
//! account. `--help` lists the faults it can be told to inject.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use ldsync_emulator::{
    DEFAULT_TOKEN, EmulatorConfig, Faults, RateLimit, Shared, ThrottleHeaders, TokenGrant, serve,
    serve_files,
};

/// A strict in-memory LaunchDarkly segments API on 127.0.0.1 (point connector.yaml's launchdarkly.base_url at it).
#[derive(Debug, Parser)]
#[command(name = "ldsync-emulator", version)]
struct Args {
    /// The port to listen on (on 127.0.0.1 only).
    #[arg(long, default_value_t = 8765)]
    port: u16,
    /// The port of the file host that serves big-segment exports' files (on 127.0.0.1; their URLs say localhost).
    #[arg(long, default_value_t = 8766)]
    file_port: u16,
    /// How long a big-segment import or export stays in each of preparing and in_progress, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    transfer_step_ms: u64,
    /// Start exports' files with a header row, `key`.
    #[arg(long)]
    export_header: bool,
    /// An access token to accept, with every role action; repeat for more.
    #[arg(long = "token", default_values_t = [DEFAULT_TOKEN.to_string()])]
    tokens: Vec<String>,
    /// The project key.
    #[arg(long, default_value = "default")]
    project: String,
    /// An environment key of the project; repeat for more.
    #[arg(long = "environment", default_values_t = ["production".to_string(), "test".to_string()])]
    environments: Vec<String>,
    /// Answer 429 beyond this many requests per 10-second window (global and per route).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Which rate-limit headers answers carry.
    #[arg(long, value_enum, default_value_t = Headers::Full)]
    throttle_headers: Headers,
    /// The share of requests answered 503 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Hold every answer back this many milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The share of successful writes applied and then left unanswered, the connection closed (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    drop_ack_rate: f64,
    /// The share of segment writes answered 409 optimistic_locking_error, unapplied (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    conflict_rate: f64,
    /// Run the emulator's clock (its Date and X-Ratelimit-Reset headers) this many milliseconds ahead, or behind
    /// when negative.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_ms: i64,
    /// Seeds the fault choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Headers {
    /// X-Ratelimit-Global/Route-Remaining and X-Ratelimit-Reset on every answer, plus Retry-After on a 429.
    Full,
    /// Retry-After on a 429, nothing else.
    RetryAfter,
    /// X-Ratelimit-Reset on a 429, nothing else.
    Reset,
    /// No rate-limit headers at all.
    None,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let headers = match args.throttle_headers {
        Headers::Full => ThrottleHeaders::Full,
        Headers::RetryAfter => ThrottleHeaders::RetryAfterOnly,
        Headers::Reset => ThrottleHeaders::ResetOnly,
        Headers::None => ThrottleHeaders::None,
    };
    let step = Duration::from_millis(args.transfer_step_ms);
    let config = EmulatorConfig {
        port: args.port,
        file_port: args.file_port,
        import_step: step,
        export_step: step,
        export_header: args.export_header,
        tokens: args
            .tokens
            .iter()
            .map(|t| TokenGrant {
                token: t.clone(),
                actions: None,
            })
            .collect(),
        projects: vec![(args.project.clone(), args.environments.clone())],
        faults: Faults {
            rate_limit: args.rate_limit.map(|requests_per_window| RateLimit {
                requests_per_window,
                window: Duration::from_secs(10),
                headers,
            }),
            error_rate: args.error_rate,
            latency: Duration::from_millis(args.latency_ms),
            drop_ack_rate: args.drop_ack_rate,
            conflict_rate: args.conflict_rate,
            clock_skew_ms: args.clock_skew_ms,
            seed: args.seed,
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let file_listener = tokio::net::TcpListener::bind(("127.0.0.1", args.file_port)).await?;
    println!(
        "ldsync emulator listening on http://{} (token {}, project {}, environments {}); exports' files on \
         http://localhost:{}",
        listener.local_addr()?,
        args.tokens.join(", "),
        args.project,
        args.environments.join(", "),
        file_listener.local_addr()?.port()
    );
    let shared = Shared::new(&config);
    let files = serve_files(file_listener, shared.clone());
    let api = serve(listener, shared, async {
        let _ = tokio::signal::ctrl_c().await;
    });
    tokio::select! {
        () = api => {}
        () = files => {}
    }
    Ok(())
}
