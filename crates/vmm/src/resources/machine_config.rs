//! `/machine-config`: vCPUs, memory and the page-size policy of the guest.

use serde::{Deserialize, Serialize};

/// Memory size used until a client sets one, in MiB (upstream's default).
pub(crate) const DEFAULT_MEM_SIZE_MIB: usize = 128;
/// Upper bound on vCPUs, as upstream enforces it.
pub(crate) const MAX_SUPPORTED_VCPUS: u8 = 32;

/// Why a machine configuration was refused; the display text is the client-visible message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    #[error("The memory size (MiB) is smaller than the previously set balloon device target size.")]
    IncompatibleBalloonSize,
    #[error("The memory size (MiB) is either 0, or not a multiple of the configured page size.")]
    InvalidMemorySize,
    #[error(
        "The number of vCPUs must be greater than 0, less than {MAX_SUPPORTED_VCPUS} and must be 1 or an even number if SMT is enabled."
    )]
    InvalidVcpuCount,
}

/// Page size backing guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl HugePages {
    fn is_valid_mem_size(self, mem_size_mib: usize) -> bool {
        match self {
            HugePages::None => true,
            HugePages::Transparent | HugePages::Hugetlbfs2M => mem_size_mib.is_multiple_of(2),
        }
    }
}

/// Firecracker's static CPU templates (x86_64 names), in upstream's order: serde lists them
/// in this order in its "unknown variant" texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StaticCpuTemplate {
    C3,
    T2,
    T2S,
    None,
    T2CL,
    T2A,
}

/// Body of `PUT /machine-config` and the shape `GET /machine-config` answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<StaticCpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// Body of `PATCH /machine-config`: every field optional, only the given ones change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    #[serde(default)]
    pub mem_size_mib: Option<usize>,
    #[serde(default)]
    pub smt: Option<bool>,
    #[serde(default)]
    pub cpu_template: Option<StaticCpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// `PATCH` with nothing to change is refused by the API layer.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl From<MachineConfig> for MachineConfigUpdate {
    /// A `PUT` is a full update: omitted optional fields fall back to their defaults, except
    /// `cpu_template`, which upstream keeps when absent.
    fn from(cfg: MachineConfig) -> Self {
        Self {
            vcpu_count: Some(cfg.vcpu_count),
            mem_size_mib: Some(cfg.mem_size_mib),
            smt: Some(cfg.smt),
            cpu_template: cfg.cpu_template,
            track_dirty_pages: Some(cfg.track_dirty_pages),
            huge_pages: Some(cfg.huge_pages),
        }
    }
}

impl MachineConfig {
    /// Guest memory in bytes; `None` when `mem_size_mib` MiB does not fit in 64 bits.
    pub fn mem_bytes(&self) -> Option<u64> {
        u64::try_from(self.mem_size_mib).ok()?.checked_mul(1 << 20)
    }

    /// Applies `update` and validates the merged result; `self` is untouched on error.
    pub fn updated(&self, update: &MachineConfigUpdate) -> Result<Self, MachineConfigError> {
        let vcpu_count = update.vcpu_count.unwrap_or(self.vcpu_count);
        let smt = update.smt.unwrap_or(self.smt);
        if vcpu_count == 0 || vcpu_count > MAX_SUPPORTED_VCPUS {
            return Err(MachineConfigError::InvalidVcpuCount);
        }
        if smt && vcpu_count > 1 && vcpu_count % 2 == 1 {
            return Err(MachineConfigError::InvalidVcpuCount);
        }
        let mem_size_mib = update.mem_size_mib.unwrap_or(self.mem_size_mib);
        let huge_pages = update.huge_pages.unwrap_or(self.huge_pages);
        if mem_size_mib == 0 || !huge_pages.is_valid_mem_size(mem_size_mib) {
            return Err(MachineConfigError::InvalidMemorySize);
        }
        let cpu_template = match update.cpu_template {
            None => self.cpu_template,
            Some(StaticCpuTemplate::None) => None,
            Some(other) => Some(other),
        };
        Ok(Self {
            vcpu_count,
            mem_size_mib,
            smt,
            cpu_template,
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages,
        })
    }
}

impl super::VmResources {
    /// `PUT`/`PATCH /machine-config`: the balloon must still fit; a static CPU template
    /// replaces a custom one.
    pub(crate) fn update_machine_config(
        &mut self,
        update: &MachineConfigUpdate,
    ) -> Result<(), MachineConfigError> {
        let updated = self.machine_config.updated(update)?;
        if let Some(balloon) = self.balloon
            && balloon.amount_mib as usize > updated.mem_size_mib
        {
            return Err(MachineConfigError::IncompatibleBalloonSize);
        }
        self.machine_config = updated;
        if update.cpu_template.is_some() {
            self.cpu_config = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(json: &str) -> MachineConfigUpdate {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_serializes_like_upstream() {
        let json = serde_json::to_string(&MachineConfig::default()).unwrap();
        assert_eq!(
            json,
            r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
        );
    }

    #[test]
    fn cpu_template_sits_after_smt() {
        let cfg = MachineConfig::default()
            .updated(&update(r#"{"cpu_template":"T2"}"#))
            .unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(
            json.starts_with(
                r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"cpu_template":"T2","#
            )
        );
        let cleared = cfg.updated(&update(r#"{"cpu_template":"None"}"#)).unwrap();
        assert_eq!(cleared.cpu_template, None);
    }

    #[test]
    fn vcpu_rules() {
        let base = MachineConfig::default();
        for bad in [
            r#"{"vcpu_count":0}"#,
            r#"{"vcpu_count":33}"#,
            r#"{"vcpu_count":3,"smt":true}"#,
        ] {
            assert_eq!(
                base.updated(&update(bad)),
                Err(MachineConfigError::InvalidVcpuCount),
                "{bad}"
            );
        }
        assert_eq!(
            base.updated(&update(r#"{"vcpu_count":32}"#))
                .unwrap()
                .vcpu_count,
            32
        );
        assert!(
            base.updated(&update(r#"{"vcpu_count":4,"smt":true}"#))
                .is_ok()
        );
    }

    #[test]
    fn memory_rules() {
        let base = MachineConfig::default();
        assert_eq!(
            base.updated(&update(r#"{"mem_size_mib":0}"#)),
            Err(MachineConfigError::InvalidMemorySize)
        );
        assert_eq!(
            base.updated(&update(r#"{"mem_size_mib":129,"huge_pages":"2M"}"#)),
            Err(MachineConfigError::InvalidMemorySize)
        );
        assert!(
            base.updated(&update(r#"{"mem_size_mib":130,"huge_pages":"2M"}"#))
                .is_ok()
        );
    }

    #[test]
    fn put_resets_omitted_fields_but_keeps_template() {
        let base = MachineConfig::default()
            .updated(&update(
                r#"{"smt":true,"vcpu_count":2,"cpu_template":"C3"}"#,
            ))
            .unwrap();
        let put: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":256}"#).unwrap();
        let merged = base.updated(&put.into()).unwrap();
        assert!(!merged.smt);
        assert_eq!(merged.cpu_template, Some(StaticCpuTemplate::C3));
        assert_eq!(merged.mem_size_mib, 256);
    }

    #[test]
    fn unknown_field_text_matches_upstream() {
        let err = serde_json::from_str::<MachineConfig>(r#"{"foo":1}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field `foo`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 1 column 6"
        );
    }
}
