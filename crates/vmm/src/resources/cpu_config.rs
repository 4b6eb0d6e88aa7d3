//! `/cpu-config`: a custom CPU template (x86_64 shape), applied by the engine through its
//! CPU model (see `squib_cpu_template`).

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
    pub msr_modifiers: Vec<RegisterModifier>,
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
        let parse = |number: &str| {
            number.parse::<u32>().map_err(|e| {
                D::Error::custom(format!(
                    "Failed to parse string [{text}] as a kvm capability - can not convert to numeric: {e}"
                ))
            })
        };
        Ok(match text.strip_prefix('!') {
            Some(rest) => Self::Remove(parse(rest)?),
            None => Self::Add(parse(&text)?),
        })
    }
}

/// Unknown fields are accepted here, as upstream does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CpuidLeafModifier {
    #[serde(deserialize_with = "number_from_str")]
    pub leaf: u32,
    #[serde(deserialize_with = "number_from_str")]
    pub subleaf: u32,
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl<'de> Deserialize<'de> for CpuidRegister {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "eax" => Self::Eax,
            "ebx" => Self::Ebx,
            "ecx" => Self::Ecx,
            "edx" => Self::Edx,
            _ => {
                return Err(D::Error::custom(
                    "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]",
                ));
            }
        })
    }
}

/// Unknown fields are accepted here, as upstream does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    #[serde(deserialize_with = "bitmap32")]
    pub bitmap: RegisterValueFilter,
}

/// An MSR modifier, under upstream's type name (serde spells it in its error texts).
/// Unknown fields are accepted here, as upstream does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RegisterModifier {
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

/// Numbers are strings with a `0x` (hex) or `0b` (binary) prefix; the texts are upstream's
/// (the parse error in its Debug form).
fn number_from_str<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = if let Some(bin) = text.strip_prefix("0b") {
        u32::from_str_radix(bin, 2)
    } else if let Some(hex) = text.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else {
        return Err(D::Error::custom(format!(
            "No supported number system prefix found in value [{text}]. Make sure to prefix \
             the number with '0x' for hexadecimal numbers or '0b' for binary numbers."
        )));
    };
    parsed.map_err(|e| {
        D::Error::custom(format!(
            "Failed to parse string [{text}] as a number for CPU template - {e:?}"
        ))
    })
}

/// A tri-state bitmap (`0`, `1`, `x`; `_` ignored; `0b` prefix optional) read from its last
/// character; fewer than `width` bits leave the high bits alone, as upstream.
fn bitmap<'de, D: Deserializer<'de>>(d: D, width: u32) -> Result<RegisterValueFilter, D::Error> {
    let text = String::deserialize(d)?;
    let bits = text.strip_prefix("0b").unwrap_or(&text);
    let mut out = RegisterValueFilter::default();
    let mut i = 0;
    for c in bits.bytes().rev() {
        if i == width {
            return Err(D::Error::custom(format!(
                "Failed to parse string [{text}] as a bitmap - string is too long"
            )));
        }
        match c {
            b'_' => continue,
            b'x' => {}
            b'0' => out.filter |= 1 << i,
            b'1' => {
                out.filter |= 1 << i;
                out.value |= 1 << i;
            }
            // Upstream prints the byte's value, not the character.
            other => {
                return Err(D::Error::custom(format!(
                    "Failed to parse string [{text}] as a bitmap - unknown character: {other}"
                )));
            }
        }
        i += 1;
    }
    Ok(out)
}

fn bitmap32<'de, D: Deserializer<'de>>(d: D) -> Result<RegisterValueFilter, D::Error> {
    bitmap(d, 32)
}

fn bitmap64<'de, D: Deserializer<'de>>(d: D) -> Result<RegisterValueFilter, D::Error> {
    bitmap(d, 64)
}

impl super::VmResources {
    /// `PUT /cpu-config`: a custom template replaces a static one, and the other way round
    /// (upstream keeps both in one field).
    pub(crate) fn set_cpu_config(&mut self, template: CustomCpuTemplate) {
        self.machine_config.cpu_template = None;
        self.cpu_config = Some(template);
    }
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

    fn error(json: &str) -> String {
        let err = serde_json::from_str::<CustomCpuTemplate>(json).unwrap_err();
        let text = err.to_string();
        text.split(" at line ").next().unwrap().to_string()
    }

    #[test]
    fn upstream_texts_and_leniency() {
        // Short bitmaps without the prefix, `_` and unknown fields inside modifiers are fine.
        let t: CustomCpuTemplate = serde_json::from_str(
            r#"{"cpuid_modifiers":[{"leaf":"0b1","subleaf":"0x0","flags":0,"extra":1,
                "modifiers":[{"register":"ecx","bitmap":"1_0x","more":true}]}],
                "msr_modifiers":[{"addr":"0x10","bitmap":"0b1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            t.cpuid_modifiers[0].modifiers[0].bitmap,
            RegisterValueFilter {
                filter: 6,
                value: 4
            }
        );
        assert_eq!(t.msr_modifiers[0].addr, 16);
        assert_eq!(
            error(r#"{"kvm_capabilities":["x1"]}"#),
            "Failed to parse string [x1] as a kvm capability - can not convert to numeric: invalid digit found in string"
        );
        assert_eq!(
            error(r#"{"msr_modifiers":[{"addr":"16","bitmap":"0"}]}"#),
            "No supported number system prefix found in value [16]. Make sure to prefix the number with '0x' for hexadecimal numbers or '0b' for binary numbers."
        );
        assert_eq!(
            error(r#"{"msr_modifiers":[{"addr":"0xg","bitmap":"0"}]}"#),
            "Failed to parse string [0xg] as a number for CPU template - ParseIntError { kind: InvalidDigit }"
        );
        assert_eq!(
            error(r#"{"msr_modifiers":[{"addr":"0x1","bitmap":"0bz"}]}"#),
            "Failed to parse string [0bz] as a bitmap - unknown character: 122"
        );
        assert_eq!(
            error(&format!(
                r#"{{"cpuid_modifiers":[{{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{{"register":"eax","bitmap":"{}"}}]}}]}}"#,
                "1".repeat(33)
            )),
            format!(
                "Failed to parse string [{}] as a bitmap - string is too long",
                "1".repeat(33)
            )
        );
        assert_eq!(
            error(
                r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{"register":"EAX","bitmap":"1"}]}]}"#
            ),
            "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]"
        );
    }
}
