//! Firecracker's command line, parsed the way upstream's own parser does (not clap: its rules
//! differ): only `--name value`, a value may not start with `--`, `--help`/`-h`/`--version`
//! anywhere win, the same error texts and exit code. squib's additions (`--accel`, `--qemu`)
//! fall back to the environment (`SQUIB_ACCEL`, `SQUIB_QEMU`) and have a help section of their own.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

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

/// One flag: its name (without `--`), whether it takes a value, and its help line.
struct Flag {
    name: &'static str,
    takes_value: bool,
    default: Option<&'static str>,
    /// Another flag that must be given with this one.
    requires: Option<&'static str>,
    /// A flag that may not be given with this one.
    forbids: Option<&'static str>,
    help: &'static str,
}

const fn flag(name: &'static str, takes_value: bool, help: &'static str) -> Flag {
    Flag {
        name,
        takes_value,
        default: None,
        requires: None,
        forbids: None,
        help,
    }
}

const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
const DEFAULT_ID: &str = "anonymous-instance";
const DEFAULT_MAX_PAYLOAD: &str = "51200";

/// Upstream's flags, with its help texts and defaults. Upstream keeps them in a sorted map:
/// the help lists them, and the `requires`/`forbids` checks run, in name order.
const FIRECRACKER_FLAGS: &[Flag] = &[
    Flag {
        default: Some(DEFAULT_API_SOCK),
        ..flag(
            "api-sock",
            true,
            "Path to unix domain socket used by the API.",
        )
    },
    flag(
        "boot-timer",
        false,
        "Whether or not to load boot timer device for logging elapsed time since InstanceStart command.",
    ),
    flag(
        "config-file",
        true,
        "Path to a file that contains the microVM configuration in JSON format.",
    ),
    flag(
        "describe-snapshot",
        true,
        "Print the data format version of the provided snapshot state file.",
    ),
    flag("enable-pci", false, "Enables PCIe support."),
    Flag {
        default: Some(DEFAULT_MAX_PAYLOAD),
        ..flag(
            "http-api-max-payload-size",
            true,
            "Http API request payload max size, in bytes.",
        )
    },
    Flag {
        default: Some(DEFAULT_ID),
        ..flag("id", true, "MicroVM unique identifier.")
    },
    flag("level", true, "Set the logger level."),
    flag(
        "log-path",
        true,
        "Path to a fifo or a file used for configuring the logger on startup.",
    ),
    flag(
        "metadata",
        true,
        "Path to a file that contains metadata in JSON format to add to the mmds.",
    ),
    flag(
        "metrics-path",
        true,
        "Path to a fifo or a file used for configuring the metrics on startup.",
    ),
    flag("mmds-size-limit", true, "Mmds data store limit, in bytes."),
    flag("module", true, "Set the logger module filter."),
    Flag {
        requires: Some("config-file"),
        ..flag(
            "no-api",
            false,
            "Optional parameter which allows starting and using a microVM without an active API socket.",
        )
    },
    Flag {
        forbids: Some("seccomp-filter"),
        ..flag(
            "no-seccomp",
            false,
            "Optional parameter which allows starting and using a microVM without seccomp filtering. Not recommended.",
        )
    },
    flag(
        "parent-cpu-time-us",
        true,
        "Parent process CPU time (wall clock, microseconds). This parameter is optional.",
    ),
    Flag {
        forbids: Some("no-seccomp"),
        ..flag(
            "seccomp-filter",
            true,
            "Optional parameter which allows specifying the path to a custom seccomp filter. For advanced users.",
        )
    },
    flag(
        "show-level",
        false,
        "Whether or not to output the level in the logs.",
    ),
    flag(
        "show-log-origin",
        false,
        "Whether or not to include the file path and line number of the log's origin.",
    ),
    flag(
        "snapshot-version",
        false,
        "Print the supported data format version.",
    ),
    flag(
        "start-time-cpu-us",
        true,
        "Process start CPU time (wall clock, microseconds). This parameter is optional.",
    ),
    flag(
        "start-time-us",
        true,
        "Process start time (wall clock, microseconds). This parameter is optional.",
    ),
    flag("version", false, "Print the binary version number."),
];

/// squib's own flags; each falls back to an environment variable.
const SQUIB_FLAGS: &[Flag] = &[
    flag(
        "accel",
        true,
        "squib: accelerator, auto|kvm|tcg (env SQUIB_ACCEL). [default: auto]",
    ),
    flag(
        "qemu",
        true,
        "squib: the QEMU binary to run (env SQUIB_QEMU). [default: qemu-system-x86_64]",
    ),
];

fn all_flags() -> impl Iterator<Item = &'static Flag> {
    FIRECRACKER_FLAGS.iter().chain(SQUIB_FLAGS)
}

/// One help section as upstream renders it: names padded to the longest, three spaces, the
/// help and the default.
fn help_section(title: &str, flags: &[Flag]) -> String {
    let name = |f: &Flag| {
        if f.takes_value {
            format!("  --{0} <{0}>", f.name)
        } else {
            format!("  --{}", f.name)
        }
    };
    let width = flags.iter().map(|f| name(f).len()).max().unwrap_or(0);
    let mut out = format!("{title}:");
    for f in flags {
        out.push_str(&format!("\n{:<width$}   {}", name(f), f.help));
        if let Some(default) = f.default {
            out.push_str(&format!(" [default: \"{default}\"]"));
        }
    }
    out
}

/// The text `--help` prints after the version line.
fn help() -> String {
    format!(
        "{}\n\n{}",
        help_section("optional arguments", FIRECRACKER_FLAGS),
        help_section("squib arguments", SQUIB_FLAGS)
    )
}

/// What was given: a flag's value, or `None` for a flag without one.
type Given = BTreeMap<&'static str, Option<String>>;

/// Upstream's parse: every token a known `--name`, given once, followed by its value when it
/// takes one (a value starting with `--` is a missing value); then `requires` and `forbids`,
/// in name order.
fn parse_flags(args: &[String]) -> Result<Given, String> {
    let mut given = Given::new();
    let mut tokens = args.iter();
    while let Some(token) = tokens.next() {
        let Some(name) = token.strip_prefix("--") else {
            return Err(unexpected(token));
        };
        let Some(flag) = all_flags().find(|f| f.name == name) else {
            return Err(unexpected(name));
        };
        if given.contains_key(flag.name) {
            return Err(format!(
                "The argument '{}' was provided more than once.",
                flag.name
            ));
        }
        let value = if flag.takes_value {
            let value = tokens
                .next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| {
                    format!(
                        "The argument '{}' requires a value, but none was supplied.",
                        flag.name
                    )
                })?;
            Some(value.clone())
        } else {
            None
        };
        given.insert(flag.name, value);
    }
    let mut sorted: Vec<&Flag> = all_flags().collect();
    sorted.sort_by_key(|f| f.name);
    for flag in sorted.into_iter().filter(|f| given.contains_key(f.name)) {
        if let Some(required) = flag.requires
            && !given.contains_key(required)
        {
            return Err(format!("Argument '{required}' required, but not found."));
        }
        if let Some(forbidden) = flag.forbids
            && given.contains_key(forbidden)
        {
            return Err(format!(
                "Argument '{forbidden}' cannot be used together with argument '{}'.",
                flag.name
            ));
        }
    }
    Ok(given)
}

fn unexpected(arg: &str) -> String {
    format!("Found argument '{arg}' which wasn't expected, or isn't valid in this context.")
}

fn parse_number<T: std::str::FromStr>(given: &Given, name: &str) -> Result<Option<T>, String> {
    given
        .get(name)
        .and_then(Option::as_ref)
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
    let args = args
        .into_iter()
        .take_while(|a| a != "--")
        .map(|a| {
            a.into_string()
                .map_err(|a| unexpected(&a.to_string_lossy()))
        })
        .collect::<Result<Vec<String>, String>>()?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Invocation::Help(help()));
    }
    if args.iter().any(|a| a == "--version") {
        return Ok(Invocation::Version);
    }
    let given = parse_flags(&args)?;
    let string = |name: &str| given.get(name).cloned().flatten();
    let present = |name: &str| given.contains_key(name);
    if present("snapshot-version") {
        return Ok(Invocation::SnapshotVersion);
    }
    if let Some(path) = string("describe-snapshot") {
        return Ok(Invocation::DescribeSnapshot(PathBuf::from(path)));
    }
    let id = string("id").unwrap_or_else(|| DEFAULT_ID.to_string());
    if !valid_instance_id(&id) {
        return Err(format!(
            "Invalid instance ID: '{id}'. It must be 1 to 64 characters, alphanumeric or '-'."
        ));
    }
    for name in ["start-time-us", "start-time-cpu-us", "parent-cpu-time-us"] {
        parse_number::<u64>(&given, name)?;
    }
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Ok(Invocation::Run(Box::new(RunArgs {
        api_sock: string("api-sock")
            .unwrap_or_else(|| DEFAULT_API_SOCK.into())
            .into(),
        id,
        config_file: string("config-file").map(PathBuf::from),
        no_api: present("no-api"),
        log_path: string("log-path").map(PathBuf::from),
        level: string("level"),
        module: string("module"),
        show_level: present("show-level"),
        show_log_origin: present("show-log-origin"),
        http_api_max_payload_size: parse_number(&given, "http-api-max-payload-size")?
            .unwrap_or(squib_api::DEFAULT_MAX_PAYLOAD),
        mmds_size_limit: parse_number(&given, "mmds-size-limit")?,
        metadata: string("metadata").map(PathBuf::from),
        metrics_path: string("metrics-path").map(PathBuf::from),
        start_time_us: parse_number(&given, "start-time-us")?,
        start_time_cpu_us: parse_number(&given, "start-time-cpu-us")?,
        parent_cpu_time_us: parse_number(&given, "parent-cpu-time-us")?,
        boot_timer: present("boot-timer"),
        no_seccomp: present("no-seccomp"),
        seccomp_filter: string("seccomp-filter").map(PathBuf::from),
        enable_pci: present("enable-pci"),
        accel: string("accel").or_else(|| from_env(ENV_ACCEL)),
        qemu: string("qemu")
            .or_else(|| from_env(ENV_QEMU))
            .map(PathBuf::from),
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
        // Upstream checks in name order: `no-seccomp` comes first.
        for args in [
            ["--no-seccomp", "--seccomp-filter", "x"],
            ["--seccomp-filter", "x", "--no-seccomp"],
        ] {
            assert_eq!(
                parse_str(&args).unwrap_err(),
                "Argument 'seccomp-filter' cannot be used together with argument 'no-seccomp'."
            );
        }
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
    fn help_is_upstreams_layout_then_squibs_section() {
        let Invocation::Help(help) = parse_str(&["--bogus", "--help"]).unwrap() else {
            panic!("--help anywhere prints the help");
        };
        let mut sections = help.split("\n\n");
        let upstream: Vec<&str> = sections.next().unwrap().lines().collect();
        assert_eq!(upstream[0], "optional arguments:");
        // Names padded to the longest, `--http-api-max-payload-size <…>` (57 columns), then three spaces.
        let line = |name: &str, help: &str| format!("{name:<57}   {help}");
        assert_eq!(
            upstream[1],
            line(
                "  --api-sock <api-sock>",
                "Path to unix domain socket used by the API. [default: \"/run/firecracker.socket\"]"
            )
        );
        assert_eq!(
            upstream.last().copied().map(str::to_string),
            Some(line("  --version", "Print the binary version number."))
        );
        assert_eq!(upstream.len(), 1 + FIRECRACKER_FLAGS.len());
        let names: Vec<&str> = FIRECRACKER_FLAGS.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "upstream lists its flags in name order");
        let squib = sections.next().unwrap();
        assert!(
            squib.starts_with("squib arguments:\n  --accel <accel>"),
            "{squib}"
        );
        assert!(
            squib.contains(
                "squib: the QEMU binary to run (env SQUIB_QEMU). [default: qemu-system-x86_64]"
            ),
            "{squib}"
        );
        assert!(sections.next().is_none());
    }

    #[test]
    fn upstreams_token_rules() {
        // A value may start with one dash, not two; `--name=value` is one unknown name.
        assert_eq!(run(&["--id", "-x"]).id, "-x");
        assert_eq!(run(&["--level", "-1"]).level.as_deref(), Some("-1"));
        assert_eq!(
            parse_str(&["--api-sock=x"]).unwrap_err(),
            "Found argument 'api-sock=x' which wasn't expected, or isn't valid in this context."
        );
        assert_eq!(
            parse_str(&["--api-sock", "--id", "x"]).unwrap_err(),
            "The argument 'api-sock' requires a value, but none was supplied."
        );
        assert_eq!(
            parse_str(&["-x"]).unwrap_err(),
            "Found argument '-x' which wasn't expected, or isn't valid in this context."
        );
        assert!(matches!(
            parse_str(&["--version", "--id"]).unwrap(),
            Invocation::Version
        ));
        assert!(matches!(
            parse_str(&["--id", "--", "--help"]).unwrap_err(),
            e if e == "The argument 'id' requires a value, but none was supplied."
        ));
        assert_eq!(
            run(&["--accel", "tcg", "--qemu", "/q"]).qemu,
            Some(PathBuf::from("/q"))
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
