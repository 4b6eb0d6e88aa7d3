//! Which CPUID bits and feature-MSR bits QEMU 7.2 can switch by name on `-cpu`.
//!
//! Names come from QEMU's `feature_word_info` (target/i386/cpu.c); every name here is
//! listed by `qemu-system-x86_64 -cpu help` on QEMU 7.2 (a unit test checks that when
//! QEMU is installed). Bits QEMU leaves unnamed (reserved, OS-controlled, or aliases such as
//! AMD's copies of MMX/FXSR in leaf 0x8000_0001) are absent: a template that forces them
//! gets a warning instead.

use squib_vmm::resources::cpu_config::CpuidRegister::{self, Eax, Ebx, Ecx, Edx};

/// One CPUID bit and the QEMU feature that controls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuidFeature {
    pub leaf: u32,
    pub subleaf: u32,
    pub register: CpuidRegister,
    pub bit: u8,
    pub name: &'static str,
}

const fn c(
    leaf: u32,
    subleaf: u32,
    register: CpuidRegister,
    bit: u8,
    name: &'static str,
) -> CpuidFeature {
    CpuidFeature {
        leaf,
        subleaf,
        register,
        bit,
        name,
    }
}

/// CPUID bit → QEMU feature name.
pub(crate) const CPUID_FEATURES: &[CpuidFeature] = &[
    // Leaf 0x1 EDX.
    c(0x1, 0, Edx, 0, "fpu"),
    c(0x1, 0, Edx, 1, "vme"),
    c(0x1, 0, Edx, 2, "de"),
    c(0x1, 0, Edx, 3, "pse"),
    c(0x1, 0, Edx, 4, "tsc"),
    c(0x1, 0, Edx, 5, "msr"),
    c(0x1, 0, Edx, 6, "pae"),
    c(0x1, 0, Edx, 7, "mce"),
    c(0x1, 0, Edx, 8, "cx8"),
    c(0x1, 0, Edx, 9, "apic"),
    c(0x1, 0, Edx, 11, "sep"),
    c(0x1, 0, Edx, 12, "mtrr"),
    c(0x1, 0, Edx, 13, "pge"),
    c(0x1, 0, Edx, 14, "mca"),
    c(0x1, 0, Edx, 15, "cmov"),
    c(0x1, 0, Edx, 16, "pat"),
    c(0x1, 0, Edx, 17, "pse36"),
    c(0x1, 0, Edx, 18, "pn"),
    c(0x1, 0, Edx, 19, "clflush"),
    c(0x1, 0, Edx, 21, "ds"),
    c(0x1, 0, Edx, 22, "acpi"),
    c(0x1, 0, Edx, 23, "mmx"),
    c(0x1, 0, Edx, 24, "fxsr"),
    c(0x1, 0, Edx, 25, "sse"),
    c(0x1, 0, Edx, 26, "sse2"),
    c(0x1, 0, Edx, 27, "ss"),
    c(0x1, 0, Edx, 28, "ht"),
    c(0x1, 0, Edx, 29, "tm"),
    c(0x1, 0, Edx, 30, "ia64"),
    c(0x1, 0, Edx, 31, "pbe"),
    // Leaf 0x1 ECX.
    c(0x1, 0, Ecx, 0, "pni"),
    c(0x1, 0, Ecx, 1, "pclmulqdq"),
    c(0x1, 0, Ecx, 2, "dtes64"),
    c(0x1, 0, Ecx, 3, "monitor"),
    c(0x1, 0, Ecx, 4, "ds-cpl"),
    c(0x1, 0, Ecx, 5, "vmx"),
    c(0x1, 0, Ecx, 6, "smx"),
    c(0x1, 0, Ecx, 7, "est"),
    c(0x1, 0, Ecx, 8, "tm2"),
    c(0x1, 0, Ecx, 9, "ssse3"),
    c(0x1, 0, Ecx, 10, "cid"),
    c(0x1, 0, Ecx, 12, "fma"),
    c(0x1, 0, Ecx, 13, "cx16"),
    c(0x1, 0, Ecx, 14, "xtpr"),
    c(0x1, 0, Ecx, 15, "pdcm"),
    c(0x1, 0, Ecx, 17, "pcid"),
    c(0x1, 0, Ecx, 18, "dca"),
    c(0x1, 0, Ecx, 19, "sse4.1"),
    c(0x1, 0, Ecx, 20, "sse4.2"),
    c(0x1, 0, Ecx, 21, "x2apic"),
    c(0x1, 0, Ecx, 22, "movbe"),
    c(0x1, 0, Ecx, 23, "popcnt"),
    c(0x1, 0, Ecx, 24, "tsc-deadline"),
    c(0x1, 0, Ecx, 25, "aes"),
    c(0x1, 0, Ecx, 26, "xsave"),
    // OSXSAVE mirrors CR4.OSXSAVE; it can only be on with XSAVE.
    c(0x1, 0, Ecx, 27, "xsave"),
    c(0x1, 0, Ecx, 28, "avx"),
    c(0x1, 0, Ecx, 29, "f16c"),
    c(0x1, 0, Ecx, 30, "rdrand"),
    c(0x1, 0, Ecx, 31, "hypervisor"),
    // Leaf 0x6 EAX.
    c(0x6, 0, Eax, 2, "arat"),
    // Leaf 0x7.0 EBX.
    c(0x7, 0, Ebx, 0, "fsgsbase"),
    c(0x7, 0, Ebx, 1, "tsc-adjust"),
    c(0x7, 0, Ebx, 2, "sgx"),
    c(0x7, 0, Ebx, 3, "bmi1"),
    c(0x7, 0, Ebx, 4, "hle"),
    c(0x7, 0, Ebx, 5, "avx2"),
    c(0x7, 0, Ebx, 7, "smep"),
    c(0x7, 0, Ebx, 8, "bmi2"),
    c(0x7, 0, Ebx, 9, "erms"),
    c(0x7, 0, Ebx, 10, "invpcid"),
    c(0x7, 0, Ebx, 11, "rtm"),
    c(0x7, 0, Ebx, 14, "mpx"),
    c(0x7, 0, Ebx, 16, "avx512f"),
    c(0x7, 0, Ebx, 17, "avx512dq"),
    c(0x7, 0, Ebx, 18, "rdseed"),
    c(0x7, 0, Ebx, 19, "adx"),
    c(0x7, 0, Ebx, 20, "smap"),
    c(0x7, 0, Ebx, 21, "avx512ifma"),
    c(0x7, 0, Ebx, 22, "pcommit"),
    c(0x7, 0, Ebx, 23, "clflushopt"),
    c(0x7, 0, Ebx, 24, "clwb"),
    c(0x7, 0, Ebx, 25, "intel-pt"),
    c(0x7, 0, Ebx, 26, "avx512pf"),
    c(0x7, 0, Ebx, 27, "avx512er"),
    c(0x7, 0, Ebx, 28, "avx512cd"),
    c(0x7, 0, Ebx, 29, "sha-ni"),
    c(0x7, 0, Ebx, 30, "avx512bw"),
    c(0x7, 0, Ebx, 31, "avx512vl"),
    // Leaf 0x7.0 ECX.
    c(0x7, 0, Ecx, 1, "avx512vbmi"),
    c(0x7, 0, Ecx, 2, "umip"),
    c(0x7, 0, Ecx, 3, "pku"),
    // OSPKE mirrors CR4.PKE; it can only be on with PKU.
    c(0x7, 0, Ecx, 4, "pku"),
    c(0x7, 0, Ecx, 5, "waitpkg"),
    c(0x7, 0, Ecx, 6, "avx512vbmi2"),
    c(0x7, 0, Ecx, 8, "gfni"),
    c(0x7, 0, Ecx, 9, "vaes"),
    c(0x7, 0, Ecx, 10, "vpclmulqdq"),
    c(0x7, 0, Ecx, 11, "avx512vnni"),
    c(0x7, 0, Ecx, 12, "avx512bitalg"),
    c(0x7, 0, Ecx, 14, "avx512-vpopcntdq"),
    c(0x7, 0, Ecx, 16, "la57"),
    c(0x7, 0, Ecx, 22, "rdpid"),
    c(0x7, 0, Ecx, 24, "bus-lock-detect"),
    c(0x7, 0, Ecx, 25, "cldemote"),
    c(0x7, 0, Ecx, 27, "movdiri"),
    c(0x7, 0, Ecx, 28, "movdir64b"),
    c(0x7, 0, Ecx, 30, "sgxlc"),
    c(0x7, 0, Ecx, 31, "pks"),
    // Leaf 0x7.0 EDX.
    c(0x7, 0, Edx, 2, "avx512-4vnniw"),
    c(0x7, 0, Edx, 3, "avx512-4fmaps"),
    c(0x7, 0, Edx, 4, "fsrm"),
    c(0x7, 0, Edx, 8, "avx512-vp2intersect"),
    c(0x7, 0, Edx, 10, "md-clear"),
    c(0x7, 0, Edx, 14, "serialize"),
    c(0x7, 0, Edx, 16, "tsx-ldtrk"),
    c(0x7, 0, Edx, 19, "arch-lbr"),
    c(0x7, 0, Edx, 22, "amx-bf16"),
    c(0x7, 0, Edx, 23, "avx512-fp16"),
    c(0x7, 0, Edx, 24, "amx-tile"),
    c(0x7, 0, Edx, 25, "amx-int8"),
    c(0x7, 0, Edx, 26, "spec-ctrl"),
    c(0x7, 0, Edx, 27, "stibp"),
    c(0x7, 0, Edx, 29, "arch-capabilities"),
    c(0x7, 0, Edx, 30, "core-capability"),
    c(0x7, 0, Edx, 31, "ssbd"),
    // Leaf 0x7.1 EAX.
    c(0x7, 1, Eax, 4, "avx-vnni"),
    c(0x7, 1, Eax, 5, "avx512-bf16"),
    // Leaf 0xD.0 EAX: XSAVE state components. QEMU derives them from the features that
    // own the state, so forcing a component means forcing its feature.
    c(0xd, 0, Eax, 3, "mpx"),
    c(0xd, 0, Eax, 4, "mpx"),
    c(0xd, 0, Eax, 5, "avx512f"),
    c(0xd, 0, Eax, 6, "avx512f"),
    c(0xd, 0, Eax, 7, "avx512f"),
    c(0xd, 0, Eax, 9, "pku"),
    // Leaf 0xD.1 EAX.
    c(0xd, 1, Eax, 0, "xsaveopt"),
    c(0xd, 1, Eax, 1, "xsavec"),
    c(0xd, 1, Eax, 2, "xgetbv1"),
    c(0xd, 1, Eax, 3, "xsaves"),
    c(0xd, 1, Eax, 4, "xfd"),
    // Leaf 0x8000_0001 ECX.
    c(0x8000_0001, 0, Ecx, 0, "lahf-lm"),
    c(0x8000_0001, 0, Ecx, 1, "cmp-legacy"),
    c(0x8000_0001, 0, Ecx, 2, "svm"),
    c(0x8000_0001, 0, Ecx, 3, "extapic"),
    c(0x8000_0001, 0, Ecx, 4, "cr8legacy"),
    c(0x8000_0001, 0, Ecx, 5, "abm"),
    c(0x8000_0001, 0, Ecx, 6, "sse4a"),
    c(0x8000_0001, 0, Ecx, 7, "misalignsse"),
    c(0x8000_0001, 0, Ecx, 8, "3dnowprefetch"),
    c(0x8000_0001, 0, Ecx, 9, "osvw"),
    c(0x8000_0001, 0, Ecx, 10, "ibs"),
    c(0x8000_0001, 0, Ecx, 11, "xop"),
    c(0x8000_0001, 0, Ecx, 12, "skinit"),
    c(0x8000_0001, 0, Ecx, 13, "wdt"),
    c(0x8000_0001, 0, Ecx, 15, "lwp"),
    c(0x8000_0001, 0, Ecx, 16, "fma4"),
    c(0x8000_0001, 0, Ecx, 17, "tce"),
    c(0x8000_0001, 0, Ecx, 19, "nodeid-msr"),
    c(0x8000_0001, 0, Ecx, 21, "tbm"),
    c(0x8000_0001, 0, Ecx, 22, "topoext"),
    c(0x8000_0001, 0, Ecx, 23, "perfctr-core"),
    c(0x8000_0001, 0, Ecx, 24, "perfctr-nb"),
    // Leaf 0x8000_0001 EDX (QEMU copies the AMD aliases of leaf 0x1 EDX itself).
    c(0x8000_0001, 0, Edx, 11, "syscall"),
    c(0x8000_0001, 0, Edx, 20, "nx"),
    c(0x8000_0001, 0, Edx, 22, "mmxext"),
    c(0x8000_0001, 0, Edx, 25, "fxsr-opt"),
    c(0x8000_0001, 0, Edx, 26, "pdpe1gb"),
    c(0x8000_0001, 0, Edx, 27, "rdtscp"),
    c(0x8000_0001, 0, Edx, 29, "lm"),
    c(0x8000_0001, 0, Edx, 30, "3dnowext"),
    c(0x8000_0001, 0, Edx, 31, "3dnow"),
    // Leaf 0x8000_0007 EDX.
    c(0x8000_0007, 0, Edx, 8, "invtsc"),
    // Leaf 0x8000_0008 EBX.
    c(0x8000_0008, 0, Ebx, 0, "clzero"),
    c(0x8000_0008, 0, Ebx, 2, "xsaveerptr"),
    c(0x8000_0008, 0, Ebx, 9, "wbnoinvd"),
    c(0x8000_0008, 0, Ebx, 12, "ibpb"),
    c(0x8000_0008, 0, Ebx, 14, "ibrs"),
    c(0x8000_0008, 0, Ebx, 15, "amd-stibp"),
    c(0x8000_0008, 0, Ebx, 24, "amd-ssbd"),
    c(0x8000_0008, 0, Ebx, 25, "virt-ssbd"),
    c(0x8000_0008, 0, Ebx, 26, "amd-no-ssb"),
];

/// One bit of a feature MSR and the QEMU feature that controls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsrFeature {
    pub addr: u32,
    pub bit: u8,
    pub name: &'static str,
}

const fn m(addr: u32, bit: u8, name: &'static str) -> MsrFeature {
    MsrFeature { addr, bit, name }
}

/// IA32_ARCH_CAPABILITIES.
pub(crate) const MSR_ARCH_CAPABILITIES: u32 = 0x10a;

/// Feature-MSR bit → QEMU feature name (QEMU's MSR feature words).
pub(crate) const MSR_FEATURES: &[MsrFeature] = &[
    m(MSR_ARCH_CAPABILITIES, 0, "rdctl-no"),
    m(MSR_ARCH_CAPABILITIES, 1, "ibrs-all"),
    m(MSR_ARCH_CAPABILITIES, 2, "rsba"),
    m(MSR_ARCH_CAPABILITIES, 3, "skip-l1dfl-vmentry"),
    m(MSR_ARCH_CAPABILITIES, 4, "ssb-no"),
    m(MSR_ARCH_CAPABILITIES, 5, "mds-no"),
    m(MSR_ARCH_CAPABILITIES, 6, "pschange-mc-no"),
    m(MSR_ARCH_CAPABILITIES, 7, "tsx-ctrl"),
    m(MSR_ARCH_CAPABILITIES, 8, "taa-no"),
    // IA32_CORE_CAPABILITIES.
    m(0xcf, 5, "split-lock-detect"),
    // IA32_PERF_CAPABILITIES.
    m(0x345, 13, "full-width-write"),
];

/// The QEMU feature controlling this CPUID bit, if QEMU names one.
pub(crate) fn cpuid_feature(
    leaf: u32,
    subleaf: u32,
    register: CpuidRegister,
    bit: u8,
) -> Option<&'static str> {
    CPUID_FEATURES
        .iter()
        .find(|f| f.leaf == leaf && f.subleaf == subleaf && f.register == register && f.bit == bit)
        .map(|f| f.name)
}

/// The QEMU feature controlling this MSR bit, if QEMU names one.
pub(crate) fn msr_feature(addr: u32, bit: u8) -> Option<&'static str> {
    MSR_FEATURES
        .iter()
        .find(|f| f.addr == addr && f.bit == bit)
        .map(|f| f.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(cpuid_feature(0x7, 0, Ebx, 16), Some("avx512f"));
        assert_eq!(cpuid_feature(0x7, 1, Ebx, 16), None);
        assert_eq!(
            cpuid_feature(0x1, 0, Ecx, 11),
            None,
            "SDBG has no QEMU name"
        );
        assert_eq!(
            cpuid_feature(0x8000_0001, 0, Edx, 23),
            None,
            "AMD MMX alias"
        );
        assert_eq!(msr_feature(MSR_ARCH_CAPABILITIES, 4), Some("ssb-no"));
        assert_eq!(msr_feature(MSR_ARCH_CAPABILITIES, 10), None);
    }

    #[test]
    fn no_bit_is_listed_twice() {
        for (i, a) in CPUID_FEATURES.iter().enumerate() {
            assert!(a.bit < 32, "{a:?}");
            for b in &CPUID_FEATURES[i + 1..] {
                assert!(
                    (a.leaf, a.subleaf, a.register, a.bit)
                        != (b.leaf, b.subleaf, b.register, b.bit),
                    "{a:?} twice"
                );
            }
        }
        for (i, a) in MSR_FEATURES.iter().enumerate() {
            assert!(a.bit < 64, "{a:?}");
            assert!(
                !MSR_FEATURES[i + 1..]
                    .iter()
                    .any(|b| (a.addr, a.bit) == (b.addr, b.bit))
            );
        }
    }

    /// Every name must be one QEMU accepts: an unknown `-cpu` property is fatal. Checks the QEMU
    /// squib would run (`SQUIB_QEMU`, else the default binary); without one it skips, except
    /// under `CI=true`, where a missing QEMU fails: CI must never pass by not testing.
    #[test]
    fn installed_qemu_knows_every_name() {
        let qemu = std::env::var_os("SQUIB_QEMU")
            // squib's default binary (squib_qemu::DEFAULT_QEMU_BINARY).
            .unwrap_or_else(|| "qemu-system-x86_64".into());
        let out = match std::process::Command::new(&qemu)
            .args(["-cpu", "help"])
            .output()
        {
            Ok(out) => out,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{qemu:?} cannot run under CI: {e}")
            }
            Err(e) => {
                eprintln!("{qemu:?} cannot run ({e}): skipped");
                return;
            }
        };
        assert!(out.status.success(), "{qemu:?} -cpu help: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((_, flags)) = text.split_once("Recognized CPUID flags:") else {
            panic!("no flag list in `-cpu help`");
        };
        let known: Vec<&str> = flags.split_whitespace().collect();
        let names = CPUID_FEATURES
            .iter()
            .map(|f| f.name)
            .chain(MSR_FEATURES.iter().map(|f| f.name));
        for name in names {
            assert!(known.contains(&name), "QEMU does not know {name}");
        }
    }
}
