//! squib's CPU templates on QEMU: a Firecracker static template (`cpu_template`) or a custom
//! one (`PUT /cpu-config`) becomes QEMU's `-cpu <base>,-feat,+feat,family=…,model=…`, which the
//! QEMU engine's launch plan puts on the command line; what `-cpu` cannot express is reported.
//!
//! Pure: [`CpuModel::for_resources`] and [`CpuModel::qemu_cpu`] build the argument;
//! [`CpuModel::unhonoured`] says what the command line cannot express, for the engine to warn
//! about once per start (the engine also checks over QMP what QEMU really applied). The mapping
//! tables are in `features.rs` and the upstream templates in `static_templates.rs`.

// A name is `pub` only when it is the crate's API (clippy -D warnings makes this an error).
#![warn(unreachable_pub)]

pub(crate) mod features;
pub(crate) mod static_templates;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use squib_vmm::VmResources;
use squib_vmm::resources::cpu_config::{CpuidRegister, CustomCpuTemplate, KvmCapability};
use squib_vmm::resources::machine_config::StaticCpuTemplate;

/// True when `cpu` is a `-cpu` argument squib itself writes for `base`: the base model, then
/// `+name`/`-name` for features of squib's tables and numeric `family`/`model`/`stepping`.
/// A state file's `-cpu` is checked with this before QEMU sees it.
pub fn is_own_cpu_argument(cpu: &str, base: &str) -> bool {
    let mut parts = cpu.split(',');
    if parts.next() != Some(base) {
        return false;
    }
    let known = |name: &str| {
        features::CPUID_FEATURES.iter().any(|f| f.name == name)
            || features::MSR_FEATURES.iter().any(|f| f.name == name)
    };
    parts.all(|part| {
        if let Some((key, value)) = part.split_once('=') {
            matches!(key, "family" | "model" | "stepping") && value.parse::<u32>().is_ok()
        } else {
            part.strip_prefix(['+', '-']).is_some_and(known)
        }
    })
}

/// Where the template came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    Static(StaticCpuTemplate),
    Custom,
}

/// A QEMU CPU feature switched on (`+name`) or off (`-name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFlag {
    pub name: &'static str,
    pub enabled: bool,
}

impl std::fmt::Display for CpuFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", if self.enabled { '+' } else { '-' }, self.name)
    }
}

/// What a template asks of QEMU's CPU model, and what it asks that QEMU cannot do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuModel {
    pub source: TemplateSource,
    /// In CPUID order, each name once.
    pub flags: Vec<CpuFlag>,
    /// CPUID leaf 0x1 EAX fields, as QEMU's `family`, `model` and `stepping` properties.
    pub(crate) family: Option<u32>,
    pub(crate) model: Option<u32>,
    pub(crate) stepping: Option<u32>,
    /// Forced CPUID bits QEMU has no name for, e.g. `0x1.0 ecx[11]=0`.
    pub(crate) unnamed_cpuid: Vec<String>,
    /// Forced MSR bits QEMU has no feature for, e.g. `0x10a[9-63]=0`.
    pub(crate) unnamed_msr: Vec<String>,
    /// `kvm_capabilities` entries (`171`, `!172`): QEMU chooses KVM capabilities itself.
    pub(crate) kvm_capabilities: Vec<String>,
}

fn reg_index(register: CpuidRegister) -> u8 {
    match register {
        CpuidRegister::Eax => 0,
        CpuidRegister::Ebx => 1,
        CpuidRegister::Ecx => 2,
        CpuidRegister::Edx => 3,
    }
}

fn reg_name(index: u8) -> &'static str {
    ["eax", "ebx", "ecx", "edx"]
        .get(usize::from(index))
        .copied()
        .unwrap_or("?")
}

fn register(index: u8) -> CpuidRegister {
    match index {
        0 => CpuidRegister::Eax,
        1 => CpuidRegister::Ebx,
        2 => CpuidRegister::Ecx,
        _ => CpuidRegister::Edx,
    }
}

/// `0-3,9,12-63`: the set bits of `mask` as ranges.
pub(crate) fn bit_ranges(mask: u64) -> String {
    let mut out = String::new();
    let mut bit = 0u32;
    while bit < 64 {
        if mask & (1 << bit) == 0 {
            bit += 1;
            continue;
        }
        let start = bit;
        while bit + 1 < 64 && mask & (1 << (bit + 1)) != 0 {
            bit += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == bit {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{bit}");
        }
        bit += 1;
    }
    out
}

/// `reg[bits]=0; reg[bits]=1` for the forced bits in `mask`.
fn forced_text(prefix: &str, mask: u64, value: u64) -> Vec<String> {
    let mut out = Vec::new();
    let zeros = mask & !value;
    let ones = mask & value;
    if zeros != 0 {
        out.push(format!("{prefix}[{}]=0", bit_ranges(zeros)));
    }
    if ones != 0 {
        out.push(format!("{prefix}[{}]=1", bit_ranges(ones)));
    }
    out
}

const STEPPING: u64 = 0xf;
const BASE_MODEL: u64 = 0xf0;
const BASE_FAMILY: u64 = 0xf00;
const PROCESSOR_TYPE: u64 = 0x3000;
const EXT_MODEL: u64 = 0xf_0000;
const EXT_FAMILY: u64 = 0xff0_0000;

impl CpuModel {
    /// The template the client configured last: `PUT /cpu-config` and a `cpu_template` in
    /// the machine config replace each other, as upstream.
    pub fn for_resources(resources: &VmResources) -> Option<Self> {
        if let Some(custom) = &resources.cpu_config {
            return Some(Self::from_template(TemplateSource::Custom, custom));
        }
        let which = resources.machine_config.cpu_template?;
        let template = static_templates::template(which)?;
        Some(Self::from_template(
            TemplateSource::Static(which),
            &template,
        ))
    }

    /// Maps every bit the template forces (`0`/`1`; `x` bits are left alone).
    pub(crate) fn from_template(source: TemplateSource, template: &CustomCpuTemplate) -> Self {
        let mut out = Self {
            source,
            flags: Vec::new(),
            family: None,
            model: None,
            stepping: None,
            unnamed_cpuid: Vec::new(),
            unnamed_msr: Vec::new(),
            kvm_capabilities: template
                .kvm_capabilities
                .iter()
                .map(|c| match c {
                    KvmCapability::Add(n) => n.to_string(),
                    KvmCapability::Remove(n) => format!("!{n}"),
                })
                .collect(),
        };
        // Later modifiers of the same register win bit by bit, as upstream applies them.
        let mut registers: BTreeMap<(u32, u32, u8), (u64, u64)> = BTreeMap::new();
        for leaf in &template.cpuid_modifiers {
            for modifier in &leaf.modifiers {
                let key = (leaf.leaf, leaf.subleaf, reg_index(modifier.register));
                let (filter, value) = registers.entry(key).or_default();
                let mask = modifier.bitmap.filter & 0xffff_ffff;
                *filter |= mask;
                *value = (*value & !mask) | (modifier.bitmap.value & mask);
            }
        }
        let mut named: Vec<(&'static str, bool)> = Vec::new();
        let mut conflicts: Vec<&'static str> = Vec::new();
        let mut add = |name: &'static str, enabled: bool| match named.iter().find(|f| f.0 == name) {
            Some(&(_, was)) if was != enabled => {
                if !conflicts.contains(&name) {
                    conflicts.push(name);
                }
            }
            Some(_) => {}
            None => named.push((name, enabled)),
        };
        for (&(leaf, subleaf, reg), &(mut filter, value)) in &registers {
            if (leaf, subleaf, reg) == (0x1, 0, 0) {
                filter = out.version_fields(filter, value);
            }
            let mut unnamed = 0u64;
            for bit in 0..32u8 {
                if filter & (1 << bit) == 0 {
                    continue;
                }
                match features::cpuid_feature(leaf, subleaf, register(reg), bit) {
                    Some(name) => add(name, value & (1 << bit) != 0),
                    None => unnamed |= 1 << bit,
                }
            }
            let prefix = format!("{leaf:#x}.{subleaf} {}", reg_name(reg));
            out.unnamed_cpuid
                .extend(forced_text(&prefix, unnamed, value));
        }
        for msr in &template.msr_modifiers {
            let (filter, value) = (msr.bitmap.filter, msr.bitmap.value);
            let mut unnamed = 0u64;
            for bit in 0..64u8 {
                if filter & (1 << bit) == 0 {
                    continue;
                }
                match features::msr_feature(msr.addr, bit) {
                    Some(name) => add(name, value & (1 << bit) != 0),
                    None => unnamed |= 1 << bit,
                }
            }
            out.unnamed_msr
                .extend(forced_text(&format!("{:#x}", msr.addr), unnamed, value));
        }
        for name in &conflicts {
            out.unnamed_cpuid
                .push(format!("{name} (forced both on and off)"));
        }
        out.flags = named
            .into_iter()
            .filter(|(name, _)| !conflicts.contains(name))
            .map(|(name, enabled)| CpuFlag { name, enabled })
            .collect();
        out
    }

    /// Takes the family/model/stepping fields of CPUID 0x1 EAX the template fully forces;
    /// returns the forced bits left to map.
    fn version_fields(&mut self, mut filter: u64, value: u64) -> u64 {
        let field = |mask: u64| (value & mask) >> mask.trailing_zeros();
        if filter & STEPPING == STEPPING {
            self.stepping = Some(field(STEPPING) as u32);
            filter &= !STEPPING;
        }
        if filter & (BASE_MODEL | EXT_MODEL) == BASE_MODEL | EXT_MODEL {
            self.model = Some((field(EXT_MODEL) << 4 | field(BASE_MODEL)) as u32);
            filter &= !(BASE_MODEL | EXT_MODEL);
        }
        if filter & (BASE_FAMILY | EXT_FAMILY) == BASE_FAMILY | EXT_FAMILY {
            let (base, ext) = (field(BASE_FAMILY), field(EXT_FAMILY));
            // QEMU's `family` is base + extended, with the base at 0xf once above 0xf.
            let family = match (base, ext) {
                (0xf, ext) => Some(0xf + ext),
                (base, 0) => Some(base),
                _ => None,
            };
            if let Some(family) = family {
                self.family = Some(family as u32);
                filter &= !(BASE_FAMILY | EXT_FAMILY);
            }
        }
        // QEMU always reports processor type 0 (original OEM processor).
        if filter & PROCESSOR_TYPE == PROCESSOR_TYPE && value & PROCESSOR_TYPE == 0 {
            filter &= !PROCESSOR_TYPE;
        }
        filter
    }

    /// The `-cpu` argument: `base` (`max`, `host`) with the template's changes.
    pub fn qemu_cpu(&self, base: &str) -> String {
        let mut out = base.to_string();
        for flag in &self.flags {
            let _ = write!(out, ",{flag}");
        }
        for (key, value) in [
            ("family", self.family),
            ("model", self.model),
            ("stepping", self.stepping),
        ] {
            if let Some(value) = value {
                let _ = write!(out, ",{key}={value}");
            }
        }
        out
    }

    /// What the `-cpu` argument cannot express, one sentence per kind (empty: everything).
    pub fn unhonoured(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.unnamed_cpuid.is_empty() {
            out.push(format!(
                "CPUID bits QEMU has no feature name for are left as QEMU sets them: {}",
                self.unnamed_cpuid.join(", ")
            ));
        }
        if !self.unnamed_msr.is_empty() {
            out.push(format!(
                "MSR bits QEMU cannot override from its command line are left as QEMU sets them: {}",
                self.unnamed_msr.join(", ")
            ));
        }
        if !self.kvm_capabilities.is_empty() {
            out.push(format!(
                "kvm_capabilities are ignored: QEMU chooses the KVM capabilities it needs itself: {}",
                self.kvm_capabilities.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
