//! Firecracker's command line: the same flags, the same error texts and exit codes, parsed
//! with clap; squib's own additions (`--accel`, `--qemu`) come last in the help, and fall back
//! to the environment (`SQUIB_ACCEL`, `SQUIB_QEMU`) through clap's `env`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, ArgMatches, Command};

/// `--accel` when the flag is absent.
pub const ENV_ACCEL: &str = "SQUIB_ACCEL";
/// `--qemu` when the flag is absent.
pub const ENV_QEMU: &str = "SQUIB_QEMU";

/// Exit code of an argument error, as upstream uses it.
pub const EXIT_ARGUMENT_PARSING: u8 = 153;

/// What squib was asked to do.
#[derive(Debug)]
pub enum Invocation {
    Help(String),
    Version,
    /// `--snapshot-version`: the version of squib's snapshot state-file format.
    SnapshotVersion,
    /// `--describe-snapshot PATH`: the format version of a state file.
    DescribeSnapshot(PathBuf),
    Run(Box<RunArgs>),
}

/// The flags of a run, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub api_sock: PathBuf,
    pub id: String,
    pub config_file: Option<PathBuf>,
    pub no_api: bool,
    pub log_path: Option<PathBuf>,
    pub level: Option<String>,
    pub module: Option<String>,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub http_api_max_payload_size: usize,
    pub mmds_size_limit: Option<usize>,
    pub metadata: Option<PathBuf>,
    pub metrics_path: Option<PathBuf>,
    /// `--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us`.
    pub start_time_us: Option<u64>,
    pub start_time_cpu_us: Option<u64>,
    pub parent_cpu_time_us: Option<u64>,
    pub boot_timer: bool,
    /// `--no-seccomp`: no filters on squib's threads, no sandbox for QEMU.
    pub no_seccomp: bool,
    /// `--seccomp-filter FILE`: upstream's compiled filter file.
    pub seccomp_filter: Option<PathBuf>,
    /// `--enable-pci`: virtio devices on PCI (a q35 machine), hot-plug after boot.
    pub enable_pci: bool,
    pub accel: Option<String>,
    pub qemu: Option<PathBuf>,
}

fn value(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .value_name(name)
        .action(ArgAction::Set)
        .help(help)
}

fn flag(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .action(ArgAction::SetTrue)
        .help(help)
}

fn command() -> Command {
    Command::new("firecracker")
        .disable_help_flag(true)
        .disable_version_flag(true)
        .no_binary_name(true)
        .args([
            value("api-sock", "Path to unix domain socket used by the API. [default: \"/run/firecracker.socket\"]"),
            value("id", "MicroVM unique identifier. [default: \"anonymous-instance\"]"),
            value("config-file", "Path to a file that contains the microVM configuration in JSON format."),
            flag("no-api", "Optional parameter which allows starting and using a microVM without an active API socket.")
                .requires("config-file"),
            value("metadata", "Path to a file that contains metadata in JSON format to add to the mmds."),
            value("log-path", "Path to a fifo or a file used for configuring the logger on startup."),
            value("level", "Set the logger level. [default: \"Info\"]"),
            value("module", "Set the logger module filter."),
            flag("show-level", "Whether or not to output the level in the logs."),
            flag("show-log-origin", "Whether or not to include the file path and line number of the log's origin."),
            value("metrics-path", "Path to a fifo or a file used for configuring the metrics on startup."),
            flag("boot-timer", "Whether or not to load boot timer device for logging elapsed time since InstanceStart command."),
            value("http-api-max-payload-size", "Http API request payload max size, in bytes. [default: \"51200\"]"),
            value("mmds-size-limit", "Mmds data store limit, in bytes."),
            value("seccomp-filter", "Optional parameter which allows specifying the path to a custom seccomp filter.")
                .conflicts_with("no-seccomp"),
            flag("no-seccomp", "Optional parameter which allows starting and using a microVM without seccomp filtering."),
            value("start-time-us", "Process start time (wall clock, microseconds)."),
            value("start-time-cpu-us", "Process start CPU time (wall clock, microseconds)."),
            value("parent-cpu-time-us", "Parent process CPU time (wall clock, microseconds)."),
            flag("enable-pci", "Enables PCIe support."),
            flag("snapshot-version", "Print the supported data format version."),
            value("describe-snapshot", "Print the data format version of the provided snapshot state file."),
            flag("help", "Show the help message.").short('h'),
            flag("version", "Print the binary version number."),
            // The help texts name the variables already: clap's `[env: …]` stays hidden.
            value("accel", "squib: accelerator, auto|kvm|tcg (env SQUIB_ACCEL). [default: auto]")
                .env(ENV_ACCEL)
                .hide_env(true),
            value("qemu", "squib: the QEMU binary to run (env SQUIB_QEMU). [default: qemu-system-x86_64]")
                .env(ENV_QEMU)
                .hide_env(true)
                .value_parser(clap::value_parser!(PathBuf)),
        ])
}

/// Firecracker's text for a clap error.
fn firecracker_message(err: &clap::Error) -> String {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => bare_name(s),
        Some(ContextValue::Strings(v)) => v.first().map(|s| bare_name(s)).unwrap_or_default(),
        _ => String::new(),
    };
    match err.kind() {
        ErrorKind::UnknownArgument => format!(
            "Found argument '{}' which wasn't expected, or isn't valid in this context.",
            context(ContextKind::InvalidArg)
        ),
        ErrorKind::ArgumentConflict => {
            let arg = context(ContextKind::InvalidArg);
            let prior = context(ContextKind::PriorArg);
            if prior.is_empty() || prior == arg {
                format!("The argument '{arg}' was provided more than once.")
            } else {
                format!("Argument '{arg}' cannot be used together with argument '{prior}'.")
            }
        }
        ErrorKind::InvalidValue | ErrorKind::NoEquals => format!(
            "The argument '{}' requires a value, but none was supplied.",
            context(ContextKind::InvalidArg)
        ),
        ErrorKind::MissingRequiredArgument => {
            format!(
                "Argument '{}' required, but not found.",
                context(ContextKind::InvalidArg)
            )
        }
        _ => err.to_string().trim().to_string(),
    }
}

/// `--api-sock <api-sock>` → `api-sock`.
fn bare_name(rendered: &str) -> String {
    rendered
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches('-')
        .to_string()
}

fn parse_number<T: std::str::FromStr>(
    matches: &ArgMatches,
    name: &str,
) -> Result<Option<T>, String> {
    matches
        .get_one::<String>(name)
        .map(|raw| {
            raw.parse::<T>()
                .map_err(|_| format!("Invalid value for '{name}': '{raw}' is not a valid number."))
        })
        .transpose()
}

fn valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses the arguments after the program name. The error is the message to print.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Invocation, String> {
    // Upstream ignores everything after `--`.
    let args: Vec<OsString> = args.into_iter().take_while(|a| a != "--").collect();
    let matches = command()
        .try_get_matches_from(args)
        .map_err(|e| firecracker_message(&e))?;
    if matches.get_flag("help") {
        return Ok(Invocation::Help(command().render_help().to_string()));
    }
    if matches.get_flag("version") {
        return Ok(Invocation::Version);
    }
    if matches.get_flag("snapshot-version") {
        return Ok(Invocation::SnapshotVersion);
    }
    if let Some(path) = matches.get_one::<String>("describe-snapshot") {
        return Ok(Invocation::DescribeSnapshot(PathBuf::from(path)));
    }
    let id = matches
        .get_one::<String>("id")
        .cloned()
        .unwrap_or_else(|| "anonymous-instance".to_string());
    if !valid_instance_id(&id) {
        return Err(format!(
            "Invalid instance ID: '{id}'. It must be 1 to 64 characters, alphanumeric or '-'."
        ));
    }
    for name in ["start-time-us", "start-time-cpu-us", "parent-cpu-time-us"] {
        parse_number::<u64>(&matches, name)?;
    }
    let string = |name: &str| matches.get_one::<String>(name).cloned();
    Ok(Invocation::Run(Box::new(RunArgs {
        api_sock: string("api-sock")
            .unwrap_or_else(|| "/run/firecracker.socket".into())
            .into(),
        id,
        config_file: string("config-file").map(PathBuf::from),
        no_api: matches.get_flag("no-api"),
        log_path: string("log-path").map(PathBuf::from),
        level: string("level"),
        module: string("module"),
        show_level: matches.get_flag("show-level"),
        show_log_origin: matches.get_flag("show-log-origin"),
        http_api_max_payload_size: parse_number(&matches, "http-api-max-payload-size")?
            .unwrap_or(squib_api::DEFAULT_MAX_PAYLOAD),
        mmds_size_limit: parse_number(&matches, "mmds-size-limit")?,
        metadata: string("metadata").map(PathBuf::from),
        metrics_path: string("metrics-path").map(PathBuf::from),
        start_time_us: parse_number(&matches, "start-time-us")?,
        start_time_cpu_us: parse_number(&matches, "start-time-cpu-us")?,
        parent_cpu_time_us: parse_number(&matches, "parent-cpu-time-us")?,
        boot_timer: matches.get_flag("boot-timer"),
        no_seccomp: matches.get_flag("no-seccomp"),
        seccomp_filter: string("seccomp-filter").map(PathBuf::from),
        enable_pci: matches.get_flag("enable-pci"),
        accel: string("accel"),
        qemu: matches.get_one::<PathBuf>("qemu").cloned(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Invocation, String> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> RunArgs {
        match parse_str(args).unwrap() {
            Invocation::Run(run) => *run,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let args = run(&[]);
        assert_eq!(args.api_sock, PathBuf::from("/run/firecracker.socket"));
        assert_eq!(args.id, "anonymous-instance");
        assert_eq!(args.http_api_max_payload_size, 51_200);
        assert!(!args.no_api);
    }

    #[test]
    fn firecracker_error_texts() {
        assert_eq!(
            parse_str(&["--foo"]).unwrap_err(),
            "Found argument 'foo' which wasn't expected, or isn't valid in this context."
        );
        assert_eq!(
            parse_str(&["--no-api"]).unwrap_err(),
            "Argument 'config-file' required, but not found."
        );
        assert_eq!(
            parse_str(&["--api-sock"]).unwrap_err(),
            "The argument 'api-sock' requires a value, but none was supplied."
        );
        assert_eq!(
            parse_str(&["--id", "a", "--id", "b"]).unwrap_err(),
            "The argument 'id' was provided more than once."
        );
        let conflict = parse_str(&["--no-seccomp", "--seccomp-filter", "x"]).unwrap_err();
        assert!(
            conflict
                == "Argument 'seccomp-filter' cannot be used together with argument 'no-seccomp'."
                || conflict
                    == "Argument 'no-seccomp' cannot be used together with argument 'seccomp-filter'.",
            "{conflict}"
        );
    }

    #[test]
    fn snapshot_flags() {
        assert!(matches!(
            parse_str(&["--snapshot-version"]).unwrap(),
            Invocation::SnapshotVersion
        ));
        assert!(matches!(
            parse_str(&["--describe-snapshot", "/s"]).unwrap(),
            Invocation::DescribeSnapshot(p) if p == std::path::Path::new("/s")
        ));
    }

    #[test]
    fn squib_flags_fall_back_to_the_environment() {
        let command = command();
        let env = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_os_string())
        };
        assert_eq!(env("accel"), Some(ENV_ACCEL.into()));
        assert_eq!(env("qemu"), Some(ENV_QEMU.into()));
        let help = command.clone().render_help().to_string();
        assert!(!help.contains("[env:"), "{help}");
        assert!(
            help.contains(
                "squib: the QEMU binary to run (env SQUIB_QEMU). [default: qemu-system-x86_64]"
            ),
            "{help}"
        );
    }

    #[test]
    fn enable_pci_is_a_flag() {
        assert!(run(&["--enable-pci"]).enable_pci);
        assert!(!run(&[]).enable_pci);
    }

    #[test]
    fn help_version_and_double_dash() {
        assert!(matches!(
            parse_str(&["--api-sock", "x", "-h"]).unwrap(),
            Invocation::Help(_)
        ));
        assert!(matches!(
            parse_str(&["--version"]).unwrap(),
            Invocation::Version
        ));
        let args = run(&["--id", "vm-1", "--", "--garbage"]);
        assert_eq!(args.id, "vm-1");
        assert!(parse_str(&["--id", "bad id"]).is_err());
        assert!(parse_str(&["--http-api-max-payload-size", "x"]).is_err());
    }
}
