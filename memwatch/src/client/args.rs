//! The options of the commands that ask a running daemon (`memwatch
//! leaks`, `status`, `objects`, `oom`): the client's, which `cli` parses.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon: HOST:PORT, http://HOST:PORT or https://HOST:PORT
    /// (default: `listen` from the config, or 127.0.0.1:9477).
    #[arg(long)]
    pub addr: Option<String>,
    /// The daemon's config, for its address and web config (default:
    /// /etc/memwatch/memwatch.toml when it exists). Over TLS, the web
    /// config's certificate is the CA unless --cacert names one.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// PEM CA certificate(s) to check an HTTPS daemon's certificate with.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Basic-auth user (or MEMWATCH_USER); the password comes from
    /// MEMWATCH_PASSWORD or --password-file, never the command line.
    #[arg(long)]
    pub user: Option<String>,
    /// A file whose first line is the basic-auth password.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Print the JSON the daemon serves.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only allocations at least this many seconds old.
    #[arg(long, value_name = "SECONDS", conflicts_with = "since")]
    pub min_age: Option<f64>,
    /// Each stack's growth over the last SECONDS, most grown first (the
    /// flame graph and pprof profile show the growth only).
    #[arg(long, value_name = "SECONDS")]
    pub since: Option<f64>,
    /// The stacks live at each process's peak (its high-water mark), not
    /// now: the report, flame graph, pprof profile and collapsed stacks.
    #[arg(long, conflicts_with_all = ["since", "min_age"])]
    pub peak: bool,
    /// Stacks by what they allocated since tracking began, freed or not
    /// (with their temporary allocations): where allocator churn comes from.
    /// The flame graph and collapsed stacks show allocations too.
    #[arg(long, conflicts_with_all = ["since", "min_age", "peak"])]
    pub allocated: bool,
    /// Stacks per process.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Python stacks: `python` folds each run of the interpreter's own C
    /// frames into one line (C extensions' frames stay); `all` shows them.
    #[arg(long, value_name = "python|all", value_parser = ["python", "all"])]
    pub frames: Option<String>,
    /// Write a flame graph (SVG) of the live heap to FILE.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,
    /// Write the live heap as a pprof profile (gzipped protobuf) to FILE.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// Print collapsed stacks (for flamegraph.pl, inferno, speedscope).
    #[arg(long)]
    pub collapsed: bool,
}

#[derive(Debug, clap::Args)]
pub struct ObjectsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The Python process.
    pub pid: u32,
    /// Types shown.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also show each type's growth since a census the daemon took this many seconds ago (or its oldest).
    #[arg(long, value_name = "SECONDS")]
    pub growth: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub struct OomArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}
