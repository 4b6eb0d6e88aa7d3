//! Which QEMU accelerator runs the guest: KVM where hardware virtualisation is really there,
//! TCG (QEMU's emulator) everywhere else.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The accelerator QEMU is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel` option.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model that suits the accelerator: the host's CPU under KVM, the richest
    /// emulated one under TCG.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// What the operator asked for: a fixed accelerator, or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// An accelerator name other than `auto`, `kvm` or `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator `{0}`: expected auto, kvm or tcg")]
pub struct AccelParseError(pub String);

impl FromStr for AccelChoice {
    type Err = AccelParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(AccelParseError(other.to_string())),
        }
    }
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        })
    }
}

/// What the host offers, as far as the accelerator decision is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// The hardware KVM module for Intel VT-x is loaded.
    pub kvm_intel: bool,
    /// The hardware KVM module for AMD-V is loaded.
    pub kvm_amd: bool,
}

impl HostFacts {
    /// Looks at this host. A `/dev/kvm` backed by anything else than `kvm_intel`/`kvm_amd`
    /// (for instance a paravirtual `kvm_pvm`) does not count as hardware virtualisation.
    pub fn probe() -> Self {
        Self {
            dev_kvm: Path::new("/dev/kvm").exists(),
            kvm_intel: Path::new("/sys/module/kvm_intel").exists(),
            kvm_amd: Path::new("/sys/module/kvm_amd").exists(),
        }
    }

    /// True when KVM is backed by hardware virtualisation.
    pub fn has_hardware_kvm(&self) -> bool {
        self.dev_kvm && (self.kvm_intel || self.kvm_amd)
    }
}

impl AccelChoice {
    /// The accelerator to use given the host's facts; `Kvm` and `Tcg` are taken as asked.
    pub fn resolve_with(self, facts: &HostFacts) -> Accel {
        match self {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto if facts.has_hardware_kvm() => Accel::Kvm,
            AccelChoice::Auto => Accel::Tcg,
        }
    }

    /// The accelerator to use on this host.
    pub fn resolve(self) -> Accel {
        self.resolve_with(&HostFacts::probe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_names_only() {
        assert_eq!("auto".parse(), Ok(AccelChoice::Auto));
        assert_eq!("kvm".parse(), Ok(AccelChoice::Kvm));
        assert_eq!("tcg".parse(), Ok(AccelChoice::Tcg));
        let err = "hvf".parse::<AccelChoice>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown accelerator `hvf`: expected auto, kvm or tcg"
        );
        assert!("KVM".parse::<AccelChoice>().is_err());
        assert!("".parse::<AccelChoice>().is_err());
        for c in [AccelChoice::Auto, AccelChoice::Kvm, AccelChoice::Tcg] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
    }

    #[test]
    fn auto_needs_dev_kvm_and_a_hardware_module() {
        let facts = |dev_kvm, kvm_intel, kvm_amd| HostFacts {
            dev_kvm,
            kvm_intel,
            kvm_amd,
        };
        let auto = AccelChoice::Auto;
        assert_eq!(auto.resolve_with(&facts(true, true, false)), Accel::Kvm);
        assert_eq!(auto.resolve_with(&facts(true, false, true)), Accel::Kvm);
        // A paravirtual KVM (e.g. kvm_pvm): /dev/kvm without a hardware module.
        assert_eq!(auto.resolve_with(&facts(true, false, false)), Accel::Tcg);
        // Module loaded but no device node (e.g. inside a container without /dev/kvm).
        assert_eq!(auto.resolve_with(&facts(false, true, false)), Accel::Tcg);
        assert_eq!(auto.resolve_with(&HostFacts::default()), Accel::Tcg);
    }

    #[test]
    fn explicit_choices_are_honoured() {
        let none = HostFacts::default();
        assert_eq!(AccelChoice::Kvm.resolve_with(&none), Accel::Kvm);
        let all = HostFacts {
            dev_kvm: true,
            kvm_intel: true,
            kvm_amd: true,
        };
        assert_eq!(AccelChoice::Tcg.resolve_with(&all), Accel::Tcg);
    }

    #[test]
    fn qemu_names_and_cpu_models() {
        assert_eq!(Accel::Kvm.qemu_name(), "kvm");
        assert_eq!(Accel::Tcg.qemu_name(), "tcg");
        assert_eq!(Accel::Kvm.cpu_model(), "host");
        assert_eq!(Accel::Tcg.cpu_model(), "max");
    }
}
