//! Expected flag sets, derived by hand from upstream's template definitions (each bit's
//! meaning from the SDM/APM comments there) and QEMU 7.2's feature names:
//!
//! | template | `-cpu` additions | unnamed bits (warned) |
//! |---|---|---|
//! | C3 | see `C3_FLAGS`; family 6 model 62 stepping 4 | 1 ECX 11 (SDBG), 7.0 EBX 12 15 (RDT-M/A) |
//! | T2 | see `T2_FLAGS`; family 6 model 63 stepping 2 | + 7.0 EBX 6 13 (FDP/FCS), 0x8000_0001 ECX 29 (MONITORX) |
//! | T2S | T2's flags + arch-capabilities MSR flags | + MSR 0x10a bits 9-63 |
//! | T2CL | T2's + `-sse4a,-misalignsse,-mmxext,-fxsr-opt` | + 0x8000_0001 EDX 23 24 (AMD MMX/FXSR aliases), MSR 0x10a bits 9-12,16,18,20-23,25,28-63 (none named in 7.2) |
//! | T2A | T2CL's + `-clzero,-xsaveerptr` | + 0x8000_0008 EBX 18 19 (IbrsPreferred/SameMode) → 1 |

use super::*;
use squib_vmm::resources::cpu_config::{
    CpuidLeafModifier, CpuidRegisterModifier, RegisterValueFilter,
};

const LEAF1: &str = "-dtes64,-monitor,-ds-cpl,-vmx,-smx,-est,-tm2,-cid,-xtpr,-pdcm,-dca,\
+mce,+mtrr,-pn,-ds,-acpi,-ss,-tm,-ia64,-pbe";
const LEAF7: &str = "-sgx,-hle,+erms,-rtm,-mpx,-avx512f,-avx512dq,-rdseed,-adx,-avx512ifma,\
-pcommit,-clflushopt,-clwb,-intel-pt,-avx512pf,-avx512er,-avx512cd,-sha-ni,-avx512bw,-avx512vl,\
-avx512vbmi,-umip,-pku,-avx512vbmi2,-gfni,-vaes,-vpclmulqdq,-avx512vnni,-avx512bitalg,\
-avx512-vpopcntdq,-la57,-rdpid,-sgxlc,-avx512-4vnniw,-avx512-4fmaps,-fsrm,-avx512-vp2intersect,\
-xsavec,-xgetbv1,-xsaves";
const T2_VERSION: &str = "family=6,model=63,stepping=2";
const ARCH_CAPS: &str = "-rdctl-no,-ibrs-all,+rsba,+skip-l1dfl-vmentry,-ssb-no,-mds-no,\
+pschange-mc-no,-tsx-ctrl,-taa-no";

const C3_FLAGS: &str = "-dtes64,-monitor,-ds-cpl,-vmx,-tm2,-cid,-fma,-xtpr,-pdcm,-movbe,\
+mce,+mtrr,-pn,-ds,-acpi,-ss,-tm,-pbe,\
-sgx,-bmi1,-hle,-avx2,-bmi2,-invpcid,-rtm,-mpx,-avx512f,-avx512dq,-rdseed,-adx,-avx512ifma,\
-clflushopt,-clwb,-intel-pt,-avx512pf,-avx512er,-avx512cd,-sha-ni,-avx512bw,-avx512vl,\
-avx512vbmi,-umip,-pku,-avx512vnni,-avx512-vpopcntdq,-la57,-rdpid,-sgxlc,\
-avx512-4vnniw,-avx512-4fmaps,-xsavec,-xgetbv1,-xsaves,-abm,-3dnowprefetch,-pdpe1gb";

fn model(which: StaticCpuTemplate) -> CpuModel {
    let template = static_templates::template(which).unwrap();
    CpuModel::from_template(TemplateSource::Static(which), &template)
}

#[test]
fn c3() {
    let m = model(StaticCpuTemplate::C3);
    assert_eq!(
        m.qemu_cpu("max"),
        format!("max,{C3_FLAGS},family=6,model=62,stepping=4")
    );
    assert_eq!(m.unnamed_cpuid, ["0x1.0 ecx[11]=0", "0x7.0 ebx[12,15]=0"]);
    assert!(m.unnamed_msr.is_empty());
}

#[test]
fn t2() {
    let m = model(StaticCpuTemplate::T2);
    assert_eq!(
        m.qemu_cpu("max"),
        format!("max,{LEAF1},{LEAF7},-3dnowprefetch,-pdpe1gb,-wbnoinvd,{T2_VERSION}")
    );
    assert_eq!(
        m.unnamed_cpuid,
        [
            "0x1.0 ecx[11]=0",
            "0x7.0 ebx[6,12-13,15]=0",
            "0x80000001.0 ecx[29]=0"
        ]
    );
    assert!(m.unnamed_msr.is_empty() && m.kvm_capabilities.is_empty());
    assert_eq!(m.unhonoured().len(), 1);
}

#[test]
fn t2s() {
    let m = model(StaticCpuTemplate::T2S);
    assert_eq!(
        m.qemu_cpu("host"),
        format!("host,{LEAF1},{LEAF7},-3dnowprefetch,-pdpe1gb,-wbnoinvd,{ARCH_CAPS},{T2_VERSION}")
    );
    assert_eq!(
        m.unnamed_cpuid,
        [
            "0x1.0 ecx[11]=0",
            "0x7.0 ebx[12,15]=0",
            "0x80000001.0 ecx[29]=0"
        ]
    );
    assert_eq!(m.unnamed_msr, ["0x10a[9,12-63]=0", "0x10a[10-11]=1"]);
}

#[test]
fn t2cl() {
    let m = model(StaticCpuTemplate::T2CL);
    assert_eq!(
        m.qemu_cpu("max"),
        format!(
            "max,{LEAF1},{LEAF7},-sse4a,-misalignsse,-3dnowprefetch,-mmxext,-fxsr-opt,-pdpe1gb,\
             -wbnoinvd,{T2_VERSION}"
        )
    );
    assert_eq!(
        m.unnamed_cpuid,
        [
            "0x1.0 ecx[11]=0",
            "0x7.0 ebx[12,15]=0",
            "0x80000001.0 ecx[29]=0",
            "0x80000001.0 edx[23-24]=0"
        ]
    );
    // Only reserved or post-7.2 bits: none of T2CL's MSR bits has a QEMU 7.2 name.
    assert_eq!(m.unnamed_msr, ["0x10a[9-12,16,18,20-23,25,28-63]=0"]);
}

#[test]
fn t2a() {
    let m = model(StaticCpuTemplate::T2A);
    assert_eq!(
        m.qemu_cpu("max"),
        format!(
            "max,{LEAF1},{LEAF7},-sse4a,-misalignsse,-3dnowprefetch,-mmxext,-fxsr-opt,-pdpe1gb,\
             -clzero,-xsaveerptr,-wbnoinvd,{T2_VERSION}"
        )
    );
    assert_eq!(
        m.unnamed_cpuid,
        [
            "0x1.0 ecx[11]=0",
            "0x7.0 ebx[12,15]=0",
            "0x80000001.0 ecx[29]=0",
            "0x80000001.0 edx[23-24]=0",
            "0x80000008.0 ebx[18-19]=1"
        ]
    );
    assert!(m.unnamed_msr.is_empty());
}

#[test]
fn none_and_no_template_mean_no_model() {
    assert_eq!(static_templates::template(StaticCpuTemplate::None), None);
    assert_eq!(CpuModel::for_resources(&VmResources::default()), None);
}

fn custom(json: &str) -> CpuModel {
    let t: CustomCpuTemplate = serde_json::from_str(json).unwrap();
    CpuModel::from_template(TemplateSource::Custom, &t)
}

#[test]
fn custom_zero_one_and_x() {
    // leaf 7.0 EBX: bit 29 (sha-ni) → 0, bit 9 (erms) → 1, bit 12 (unnamed) → 0, rest x.
    let m = custom(
        r#"{"cpuid_modifiers":[{"leaf":"0x7","subleaf":"0x0","flags":1,"modifiers":[
            {"register":"ebx","bitmap":"0bxx0xxxxxxxxxxxxxxxx0xx1xxxxxxxxx"}]}]}"#,
    );
    assert_eq!(m.qemu_cpu("max"), "max,+erms,-sha-ni");
    assert_eq!(m.unnamed_cpuid, ["0x7.0 ebx[12]=0"]);
    assert_eq!(m.unhonoured().len(), 1);
    assert!(m.unhonoured()[0].contains("0x7.0 ebx[12]=0"));
}

#[test]
fn custom_all_x_changes_nothing() {
    let m = custom(
        r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[
            {"register":"ecx","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#,
    );
    assert_eq!(m.qemu_cpu("max"), "max");
    assert!(m.unhonoured().is_empty());
}

#[test]
fn later_modifiers_win_bit_by_bit_and_conflicts_are_warned() {
    let leaf = |bits: u64, value: u64| CpuidLeafModifier {
        leaf: 0xd,
        subleaf: 0,
        flags: 1,
        modifiers: vec![CpuidRegisterModifier {
            register: CpuidRegister::Eax,
            bitmap: RegisterValueFilter {
                filter: bits,
                value,
            },
        }],
    };
    // Bit 9 (PKRU state → pku) on, then off: off wins. Bits 3 and 4 (MPX state) disagree.
    let t = CustomCpuTemplate {
        cpuid_modifiers: vec![leaf(1 << 9, 1 << 9), leaf(1 << 9 | 0b11000, 0b01000)],
        ..Default::default()
    };
    let m = CpuModel::from_template(TemplateSource::Custom, &t);
    assert_eq!(m.qemu_cpu("max"), "max,-pku");
    assert_eq!(m.unnamed_cpuid, ["mpx (forced both on and off)"]);
}

#[test]
fn msrs_and_kvm_capabilities() {
    let m = custom(
        r#"{"kvm_capabilities":["171","!172"],
            "msr_modifiers":[
              {"addr":"0x10a","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1xxx1xxxx"},
              {"addr":"0x48","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]}"#,
    );
    assert_eq!(m.qemu_cpu("host"), "host,+ssb-no,+taa-no");
    assert_eq!(m.unnamed_msr, ["0x48[0]=0"]);
    assert_eq!(m.kvm_capabilities, ["171", "!172"]);
    let warnings = m.unhonoured();
    assert_eq!(warnings.len(), 2);
    assert!(warnings[1].contains("171, !172"));
}

#[test]
fn version_fields() {
    // Family 0x17 (base 0xf + extended 0x8), model 0x31, stepping 0: an AMD Zen 2.
    let m = custom(
        r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[
            {"register":"eax","bitmap":"0bxxxx000010000011xx00111100010000"}]}]}"#,
    );
    assert_eq!(m.qemu_cpu("max"), "max,family=23,model=49,stepping=0");
    assert!(m.unhonoured().is_empty());
    // Only part of the model field: not expressible.
    let m = custom(
        r#"{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[
            {"register":"eax","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxx0101xxxx"}]}]}"#,
    );
    assert_eq!(m.qemu_cpu("max"), "max");
    assert_eq!(m.unnamed_cpuid, ["0x1.0 eax[5,7]=0", "0x1.0 eax[4,6]=1"]);
}

#[test]
fn custom_template_wins_over_the_static_one() {
    let mut resources = VmResources::default();
    resources.machine_config.cpu_template = Some(StaticCpuTemplate::T2);
    assert_eq!(
        CpuModel::for_resources(&resources).map(|m| m.source),
        Some(TemplateSource::Static(StaticCpuTemplate::T2))
    );
    resources.cpu_config = Some(CustomCpuTemplate::default());
    assert_eq!(
        CpuModel::for_resources(&resources).map(|m| m.source),
        Some(TemplateSource::Custom)
    );
}

#[test]
fn ranges() {
    assert_eq!(bit_ranges(0), "");
    assert_eq!(bit_ranges(1), "0");
    assert_eq!(bit_ranges(0b1110_1001), "0,3,5-7");
    assert_eq!(bit_ranges(u64::MAX), "0-63");
}

#[test]
fn only_cpu_arguments_squib_writes_pass_the_state_file_check() {
    let t2 = model(StaticCpuTemplate::T2);
    assert!(is_own_cpu_argument(&t2.qemu_cpu("max"), "max"));
    assert!(is_own_cpu_argument("max", "max"));
    assert!(is_own_cpu_argument("host,-avx,family=6", "host"));
    for crafted in [
        "host",
        "max,+avx,,",
        "max,+avx,x-foo=on",
        "max,pmu=on",
        "max,+avx -device virtio-net",
        "max,family=six",
        "max,+no-such-feature",
        "qemu64",
    ] {
        assert!(!is_own_cpu_argument(crafted, "max"), "{crafted}");
    }
}
