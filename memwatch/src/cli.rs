//! Command-line interface.

use std::{path::PathBuf, process::ExitCode};

pub use crate::client::args::{ClientArgs, LeaksArgs, ObjectsArgs, OomArgs, StatusArgs};
use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "memwatch",
    version,
    long_version = crate::kernel::object::LONG_VERSION,
    about = "Finds memory leaks in running processes with eBPF: which process, how fast, from which line of code."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the host, track processes, serve /metrics, /leaks, /healthz.
    Run(RunArgs),
    /// Show the leak report of a running daemon (suspects, then tracked processes).
    Leaks(LeaksArgs),
    /// Show the state of a running daemon.
    Status(StatusArgs),
    /// Start exact tracking in a running daemon: a process by pid, or every
    /// process whose executable matches a glob (now and later), for a while
    /// or until untracked. Over the control socket (root, or control.group).
    Track(TrackArgs),
    /// Stop exact tracking started by `track` (or by the config, until the
    /// next reload): its probes are detached, its stacks stay in /leaks.
    Untrack(UntrackArgs),
    /// Show the OOM killer's victims a running daemon saw: who, where, its
    /// cgroup's limit, its memory curve and the stacks that held its memory.
    Oom(OomArgs),
    /// Take a census of a Python process's live objects by type, through a running daemon.
    Objects(ObjectsArgs),
    /// Run a command under exact tracking and report what it did not free
    /// when it exits, as valgrind --leak-check=full does (needs root).
    Check(CheckArgs),
    /// Closes a finished check's probes once it has exited (internal).
    #[command(hide = true)]
    CloseProbes { parent: u32, fds: Vec<i32> },
    /// Print shell completions (the package installs them).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page, roff, from this help (the package installs it).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON on stdout (the text goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write the report to FILE, apart from the command's own output, as
    /// valgrind's --log-file: the JSON with --json (the text stays on
    /// stderr), else the text (stderr gets its summary line).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// What makes memwatch exit with 23 when the command itself succeeded.
    #[arg(long, value_enum, default_value = "lost")]
    pub fail_on: crate::check::FailOn,
    /// Suppressions: lines `leak:PATTERN`, `fun:PATTERN` or `obj:PATTERN`.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Option<PathBuf>,
    /// Stacks shown per category.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Also check the processes the command forks (and what they exec),
    /// each at its own exit.
    #[arg(long)]
    pub follow_forks: bool,
    /// Map sizes and probe placement from this config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SocketArgs {
    /// The daemon's control socket (default: control.socket from --config,
    /// or /run/memwatch/control.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read the control socket's path from this config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "exe"])))]
pub struct TrackArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The process to track.
    pub pid: Option<u32>,
    /// Track processes whose executable matches this glob, now and later.
    #[arg(long, value_name = "GLOB")]
    pub exe: Option<String>,
    /// End by itself after this long: 90s, 10m, 1h30m (default: until untracked).
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::control::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "exe"])))]
pub struct UntrackArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The process to stop tracking.
    pub pid: Option<u32>,
    /// The glob given to `track --exe` (or in the config's track.exe).
    #[arg(long, value_name = "GLOB")]
    pub exe: Option<String>,
}

fn target(pid: Option<u32>, exe: Option<String>) -> crate::control::Target {
    match (pid, exe) {
        (Some(p), _) => crate::control::Target::Pid(p),
        (None, Some(g)) => crate::control::Target::Exe(g),
        // clap's group requires one.
        (None, None) => unreachable!("clap requires a pid or --exe"),
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); see deploy/memwatch.toml for every key.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address for the HTTP API (overrides `listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Track this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Track processes whose executable matches this glob, now and later (repeatable).
    #[arg(long = "exe", value_name = "GLOB")]
    pub exe: Vec<String>,
    /// Log filter, e.g. "debug" or "memwatch=debug" (overrides `log`).
    #[arg(long)]
    pub log: Option<String>,
    /// Prometheus exporters' web configuration file: TLS and basic auth
    /// (overrides `web_config_file`).
    #[arg(long, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// The control socket `memwatch track` talks to (overrides `control.socket`).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Leaks(a) => client_call(&a.client, |d| crate::client::leaks(d, &a)),
        Command::Status(a) => client_call(&a.client, |d| crate::client::status(d, a.client.json)),
        Command::Objects(a) => client_call(&a.client, |d| crate::client::objects(d, &a)),
        Command::Oom(a) => client_call(&a.client, |d| crate::client::oom(d, a.client.json)),
        Command::Track(a) => socket_call(&a.socket, |s| {
            let for_seconds = a.duration.map(|d| d.as_secs_f64());
            crate::client::socket::track(s, target(a.pid, a.exe.clone()), for_seconds, a.socket.json)
        }),
        Command::Untrack(a) => socket_call(&a.socket, |s| {
            crate::client::socket::untrack(s, target(a.pid, a.exe.clone()), a.socket.json)
        }),
        Command::Check(a) => check(a),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "memwatch",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => match man(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memwatch man: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CloseProbes { parent, fds } => {
            crate::check::close_probes_after(parent, &fds);
            ExitCode::SUCCESS
        }
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let own_failure = ExitCode::from(crate::check::OWN_FAILURE as u8);
    let config = match Config::load(args.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memwatch: {e}");
            return own_failure;
        }
    };
    init_logging("warn");
    let opts = crate::check::Options {
        argv: args.command,
        json: args.json,
        log_file: args.log_file,
        fail_on: args.fail_on,
        suppressions: args.suppressions,
        limit: args.limit,
        follow_forks: args.follow_forks,
    };
    match crate::check::run(config, opts) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("memwatch check: {e:#}");
            own_failure
        }
    }
}

/// memwatch(1): the top-level help, then every visible command's synopsis,
/// description and options under its own heading.
fn man(out: &mut impl std::io::Write) -> std::io::Result<()> {
    let cli = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    for sub in cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = sub.get_name().to_string();
        let page = clap_mangen::Man::new(sub.clone().bin_name(format!("memwatch {name}")));
        let mut body = Vec::new();
        page.render_synopsis_section(&mut body)?;
        page.render_description_section(&mut body)?;
        page.render_options_section(&mut body)?;
        // Its sections become sub-sections of the command's own.
        let body = String::from_utf8_lossy(&body).replace(".SH ", ".SS ");
        writeln!(out, ".SH \"MEMWATCH {}\"", name.to_uppercase())?;
        out.write_all(body.as_bytes())?;
    }
    writeln!(
        out,
        ".SH FILES\n/etc/memwatch/memwatch.toml (the annotated config), /run/memwatch/control.sock, \
         /usr/share/memwatch/ (Prometheus rules, Grafana dashboard)"
    )?;
    man.render_version_section(out)
}

fn client_call(c: &ClientArgs, f: impl FnOnce(&crate::client::Daemon) -> anyhow::Result<()>) -> ExitCode {
    let result = crate::client::connect(c).and_then(|d| f(&d));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn socket_call(s: &SocketArgs, f: impl FnOnce(&std::path::Path) -> anyhow::Result<()>) -> ExitCode {
    let result = crate::client::socket::path(s.socket.clone(), s.config.as_deref()).and_then(|p| f(&p));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        web_config_file: args.web_config_file,
        pids: args.pids,
        exe: args.exe,
        log: args.log,
        control_socket: args.control_socket,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memwatch: {e}");
            return ExitCode::from(2);
        }
    };
    let web = match crate::http::Web::load(config.web_config_file.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("memwatch: web_config_file: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    if !config.listen.ip().is_loopback() && !web.authenticates() {
        tracing::warn!(
            listen = %config.listen,
            "serving /leaks beyond loopback with no authentication: set web_config_file (TLS, basic auth)"
        );
    }
    let source = crate::daemon::Source {
        path: args.config,
        overrides,
    };
    match crate::daemon::run(config, web, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("memwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// RUST_LOG, when set and valid, wins over the configured filter.
fn init_logging(configured: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(configured));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "memwatch",
            "run",
            "--pid",
            "5",
            "--pid",
            "6",
            "--exe",
            "leak*",
            "--listen",
            "127.0.0.1:1",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else { panic!("run") };
        assert_eq!(a.pids, vec![5, 6]);
        assert_eq!(a.exe, vec!["leak*"]);
        assert!(Cli::try_parse_from(["memwatch", "run", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["memwatch", "run", "--bogus"]).is_err());
        let cli = Cli::try_parse_from(["memwatch", "leaks", "--pid", "7", "--json", "--addr", "127.0.0.1:1"]).unwrap();
        let Command::Leaks(l) = cli.command else {
            panic!("leaks")
        };
        assert_eq!(
            (l.pid, l.client.json, l.client.addr.as_deref()),
            (Some(7), true, Some("127.0.0.1:1"))
        );
        assert!(matches!(
            Cli::try_parse_from(["memwatch", "status"]).unwrap().command,
            Command::Status(_)
        ));
    }

    #[test]
    fn track_takes_a_pid_or_a_glob_and_a_duration() {
        let cli = Cli::try_parse_from(["memwatch", "track", "4242", "--for", "10m"]).unwrap();
        let Command::Track(t) = cli.command else {
            panic!("track")
        };
        assert_eq!(
            (t.pid, t.duration),
            (Some(4242), Some(std::time::Duration::from_secs(600)))
        );
        let cli = Cli::try_parse_from(["memwatch", "track", "--exe", "redis*", "--socket", "/tmp/s"]).unwrap();
        let Command::Track(t) = cli.command else {
            panic!("track")
        };
        assert_eq!(target(t.pid, t.exe), crate::control::Target::Exe("redis*".into()));
        assert_eq!(t.socket.socket.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert!(Cli::try_parse_from(["memwatch", "track"]).is_err());
        assert!(Cli::try_parse_from(["memwatch", "track", "1", "--exe", "x"]).is_err());
        assert!(Cli::try_parse_from(["memwatch", "track", "1", "--for", "soon"]).is_err());
        let cli = Cli::try_parse_from(["memwatch", "untrack", "--exe", "x*"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Untrack(UntrackArgs { exe: Some(_), .. })
        ));
        assert!(Cli::try_parse_from(["memwatch", "untrack"]).is_err());
    }
}
