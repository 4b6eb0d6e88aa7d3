//! The jailer's command line, parsed with upstream's rules: `--name value` pairs, flags,
//! repeatable `--cgroup`/`--resource-limit`, required arguments checked in name order,
//! and everything after `--` handed to the jailed binary.

use std::collections::BTreeMap;

/// Upstream's argument-parser error texts.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArgError {
    #[error("Argument '{0}' required, but not found.")]
    MissingArgument(String),
    #[error("The argument '{0}' requires a value, but none was supplied.")]
    MissingValue(String),
    #[error("Found argument '{0}' which wasn't expected, or isn't valid in this context.")]
    UnexpectedArgument(String),
    #[error("The argument '{0}' was provided more than once.")]
    DuplicateArgument(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flag,
    Single,
    Multiple,
}

struct Spec {
    name: &'static str,
    kind: Kind,
    required: bool,
    default: Option<&'static str>,
    help: &'static str,
}

const fn spec(name: &'static str, kind: Kind, help: &'static str) -> Spec {
    Spec {
        name,
        kind,
        required: false,
        default: None,
        help,
    }
}

const fn required(name: &'static str, help: &'static str) -> Spec {
    Spec {
        name,
        kind: Kind::Single,
        required: true,
        default: None,
        help,
    }
}

const fn with_default(name: &'static str, default: &'static str, help: &'static str) -> Spec {
    Spec {
        name,
        kind: Kind::Single,
        required: false,
        default: Some(default),
        help,
    }
}

/// Upstream's arguments, in upstream's (alphabetical) order.
const SPECS: &[Spec] = &[
    spec(
        "cgroup",
        Kind::Multiple,
        "Cgroup and value to be set by the jailer. It must follow this format: \
         <cgroup_file>=<value> (e.g cpu.shares=10). This argument can be used multiple times \
         to add multiple cgroups.",
    ),
    with_default(
        "cgroup-version",
        "1",
        "Select the cgroup version used by the jailer.",
    ),
    with_default(
        "chroot-base-dir",
        "/srv/jailer",
        "The base folder where chroot jails are located.",
    ),
    spec(
        "daemonize",
        Kind::Flag,
        "Daemonize the jailer before exec, by invoking setsid(), and redirecting the standard \
         I/O file descriptors to /dev/null.",
    ),
    required("exec-file", "File path to exec into."),
    required(
        "gid",
        "The group identifier the jailer switches to after exec.",
    ),
    required("id", "Jail ID."),
    spec(
        "netns",
        Kind::Single,
        "Path to the network namespace this microVM should join.",
    ),
    spec("new-pid-ns", Kind::Flag, "Exec into a new PID namespace."),
    spec(
        "parent-cgroup",
        Kind::Single,
        "Parent cgroup in which the cgroup of this microvm will be placed.",
    ),
    spec(
        "resource-limit",
        Kind::Multiple,
        "Resource limit values to be set by the jailer. It must follow this format: \
         <resource>=<value> (e.g no-file=1024). This argument can be used multiple times to \
         add multiple resource limits. Current available resource values are:\n\t\tfsize: The \
         maximum size in bytes for files created by the process.\n\t\tno-file: Specifies a \
         value one greater than the maximum file descriptor number that can be opened by this \
         process.",
    ),
    required(
        "uid",
        "The user identifier the jailer switches to after exec.",
    ),
    spec("version", Kind::Flag, "Print the binary version number."),
];

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Help,
    Version,
    Run(Args),
}

/// Parsed values of a run.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Args {
    singles: BTreeMap<&'static str, String>,
    flags: Vec<&'static str>,
    multiples: BTreeMap<&'static str, Vec<String>>,
    /// Everything after `--`.
    pub extra: Vec<String>,
}

impl Args {
    /// The value given, else the default.
    pub fn single(&self, name: &str) -> Option<&str> {
        self.singles.get(name).map(String::as_str).or_else(|| {
            SPECS
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.default)
        })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    pub fn multiple(&self, name: &str) -> &[String] {
        self.multiples.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: &[String]) -> Result<Parsed, ArgError> {
    let (own, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    if own.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Parsed::Help);
    }
    if own.iter().any(|a| a == "--version") {
        return Ok(Parsed::Version);
    }
    let mut parsed = Args {
        extra: extra.to_vec(),
        ..Args::default()
    };
    let mut iter = own.iter();
    while let Some(arg) = iter.next() {
        let Some(name) = arg.strip_prefix("--") else {
            return Err(ArgError::UnexpectedArgument(arg.clone()));
        };
        let spec = SPECS
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ArgError::UnexpectedArgument(name.to_string()))?;
        let seen = parsed.singles.contains_key(spec.name) || parsed.flags.contains(&spec.name);
        if seen {
            return Err(ArgError::DuplicateArgument(name.to_string()));
        }
        if spec.kind == Kind::Flag {
            parsed.flags.push(spec.name);
            continue;
        }
        let value = iter
            .next()
            .filter(|v| !v.starts_with("--"))
            .ok_or_else(|| ArgError::MissingValue(spec.name.to_string()))?
            .clone();
        match spec.kind {
            Kind::Multiple => parsed.multiples.entry(spec.name).or_default().push(value),
            _ => {
                parsed.singles.insert(spec.name, value);
            }
        }
    }
    if let Some(missing) = SPECS
        .iter()
        .find(|s| s.required && !parsed.singles.contains_key(s.name))
    {
        return Err(ArgError::MissingArgument(missing.name.to_string()));
    }
    Ok(Parsed::Run(parsed))
}

/// Upstream's help layout: required arguments, then optional ones, names aligned.
pub(crate) fn help() -> String {
    let name = |s: &Spec| {
        if s.kind == Kind::Flag {
            format!("  --{}", s.name)
        } else {
            format!("  --{0} <{0}>", s.name)
        }
    };
    let section = |required: bool| {
        let specs: Vec<&Spec> = SPECS.iter().filter(|s| s.required == required).collect();
        let width = specs.iter().map(|s| name(s).len()).max().unwrap_or(0);
        specs
            .iter()
            .map(|s| {
                let help = match s.default {
                    Some(d) => format!("{} [default: \"{d}\"]", s.help),
                    None => s.help.to_string(),
                };
                format!("{:<width$}   {help}", name(s))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "required arguments:\n{}\n\noptional arguments:\n{}\n  --help   Show the help message.",
        section(true),
        section(false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Parsed, ArgError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> Args {
        match parse_str(args).unwrap() {
            Parsed::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    const BASE: &[&str] = &["--id", "a", "--exec-file", "/x", "--uid", "1", "--gid", "2"];

    #[test]
    fn required_arguments_in_upstream_order() {
        assert_eq!(
            parse_str(&[]).unwrap_err().to_string(),
            "Argument 'exec-file' required, but not found."
        );
        assert_eq!(
            parse_str(&["--exec-file", "/x", "--gid", "1"])
                .unwrap_err()
                .to_string(),
            "Argument 'id' required, but not found."
        );
    }

    #[test]
    fn errors_use_upstream_texts() {
        assert_eq!(
            parse_str(&["--bogus"]).unwrap_err().to_string(),
            "Found argument 'bogus' which wasn't expected, or isn't valid in this context."
        );
        assert_eq!(
            parse_str(&["--id", "a", "--id", "b"])
                .unwrap_err()
                .to_string(),
            "The argument 'id' was provided more than once."
        );
        assert_eq!(
            parse_str(&["--id", "--uid", "1"]).unwrap_err().to_string(),
            "The argument 'id' requires a value, but none was supplied."
        );
    }

    #[test]
    fn defaults_multiples_and_extra_args() {
        let mut argv = BASE.to_vec();
        argv.extend([
            "--cgroup",
            "cpu.shares=2",
            "--cgroup",
            "cpuset.mems=0",
            "--daemonize",
            "--",
            "--api-sock",
            "/run/fc.sock",
        ]);
        let args = run(&argv);
        assert_eq!(args.single("chroot-base-dir"), Some("/srv/jailer"));
        assert_eq!(args.single("cgroup-version"), Some("1"));
        assert_eq!(args.multiple("cgroup"), ["cpu.shares=2", "cpuset.mems=0"]);
        assert!(args.flag("daemonize"));
        assert!(!args.flag("new-pid-ns"));
        assert_eq!(args.extra, ["--api-sock", "/run/fc.sock"]);
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse_str(&["--bogus", "-h"]).unwrap(), Parsed::Help);
        assert_eq!(parse_str(&["--version"]).unwrap(), Parsed::Version);
        assert!(help().contains("--chroot-base-dir <chroot-base-dir>"));
    }
}
