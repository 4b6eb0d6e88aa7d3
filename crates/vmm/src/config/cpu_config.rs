//! `/cpu-config`: a custom CPU template (x86_64 shape), applied by the engine through its
//! CPU model (see the QEMU engine's `cpu_model`).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Body of `PUT /cpu-config` on x86_64; every field defaults to empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCpuTemplate {
    #[serde(default)]
    pub kvm_capabilities: Vec<KvmCapability>,
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default)]
    pub msr_modifiers: Vec<MsrModifier>,
}

/// A KVM capability to require (`"171"`) or to drop (`"!171"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmCapability {
    Add(u32),
    Remove(u32),
}

impl<'de> Deserialize<'de> for KvmCapability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (remove, number) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let value = number.parse::<u32>().map_err(|e| {
            D::Error::custom(format!("Failed to parse string [{text}] as a number: {e}"))
        })?;
        Ok(if remove {
            Self::Remove(value)
        } else {
            Self::Add(value)
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    #[serde(deserialize_with = "number_from_str")]
    pub leaf: u32,
    #[serde(deserialize_with = "number_from_str")]
    pub subleaf: u32,
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    #[serde(deserialize_with = "bitmap32")]
    pub bitmap: RegisterValueFilter,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    #[serde(deserialize_with = "number_from_str")]
    pub addr: u32,
    #[serde(deserialize_with = "bitmap64")]
    pub bitmap: RegisterValueFilter,
}

/// Which bits to set (`filter`) and to what (`value`); `x` leaves a bit alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterValueFilter {
    pub filter: u64,
    pub value: u64,
}

/// Numbers are strings: decimal, `0x` hex or `0b` binary.
fn number_from_str<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = if let Some(hex) = text.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if let Some(bin) = text.strip_prefix("0b") {
        u32::from_str_radix(bin, 2)
    } else {
        text.parse()
    };
    parsed
        .map_err(|e| D::Error::custom(format!("Failed to parse string [{text}] as a number: {e}")))
}

fn bitmap<'de, D: Deserializer<'de>>(d: D, width: usize) -> Result<RegisterValueFilter, D::Error> {
    let text = String::deserialize(d)?;
    let bits = text.strip_prefix("0b").ok_or_else(|| {
        D::Error::custom(format!(
            "Failed to parse string [{text}] as a bitmap: missing 0b prefix"
        ))
    })?;
    let bits: Vec<char> = bits.chars().filter(|c| *c != '_').collect();
    if bits.len() != width {
        return Err(D::Error::custom(format!(
            "Failed to parse string [{text}] as a bitmap: expected {width} bits"
        )));
    }
    let mut out = RegisterValueFilter::default();
    for (i, c) in bits.iter().rev().enumerate() {
        match c {
            '0' => out.filter |= 1 << i,
            '1' => {
                out.filter |= 1 << i;
                out.value |= 1 << i;
            }
            'x' | 'X' => {}
            other => {
                return Err(D::Error::custom(format!(
                    "Failed to parse string [{text}] as a bitmap: invalid character {other}"
                )));
            }
        }
    }
    Ok(out)
}

fn bitmap32<'de, D: Deserializer<'de>>(d: D) -> Result<RegisterValueFilter, D::Error> {
    bitmap(d, 32)
}

fn bitmap64<'de, D: Deserializer<'de>>(d: D) -> Result<RegisterValueFilter, D::Error> {
    bitmap(d, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_shape() {
        let t: CustomCpuTemplate = serde_json::from_str(
            r#"{"kvm_capabilities":["171","!172"],
                "cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,
                  "modifiers":[{"register":"eax","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx01"}]}],
                "msr_modifiers":[]}"#,
        )
        .unwrap();
        assert_eq!(
            t.kvm_capabilities,
            [KvmCapability::Add(171), KvmCapability::Remove(172)]
        );
        assert_eq!(
            t.cpuid_modifiers[0].modifiers[0].bitmap,
            RegisterValueFilter {
                filter: 3,
                value: 1
            }
        );
        let err = serde_json::from_str::<CustomCpuTemplate>(r#"{"reg_modifiers":[]}"#).unwrap_err();
        assert!(err.to_string().starts_with("unknown field `reg_modifiers`, expected one of `kvm_capabilities`, `cpuid_modifiers`, `msr_modifiers`"));
    }
}
