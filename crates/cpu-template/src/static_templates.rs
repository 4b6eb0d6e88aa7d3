//! Firecracker's x86_64 static CPU templates as data, read from upstream's
//! `src/vmm/src/cpu_config/x86_64/static_cpu_templates/*.rs` (2023 definitions).
//!
//! Each row is one CPUID register modifier: `filter` marks the bits the template forces,
//! `value` what it forces them to (Firecracker's `RegisterValueFilter`). The resulting QEMU
//! flags per template are spelled out, and checked, in `tests.rs`.

use squib_vmm::resources::cpu_config::CpuidRegister::{self, Eax, Ebx, Ecx, Edx};
use squib_vmm::resources::cpu_config::{
    CpuidLeafModifier, CpuidRegisterModifier, CustomCpuTemplate, RegisterModifier,
    RegisterValueFilter,
};
use squib_vmm::resources::machine_config::StaticCpuTemplate;

/// One CPUID register modifier: leaf, subleaf, register, filter, value.
type Row = (u32, u32, CpuidRegister, u32, u32);

const C3: &[Row] = &[
    (0x1, 0, Eax, 0x0fff_3fff, 0x0003_06e4),
    (0x1, 0, Ecx, 0x0040_dd3c, 0),
    (0x1, 0, Edx, 0xa864_1080, 0x0000_1080),
    (0x7, 0, Ebx, 0xffaf_dd3c, 0),
    (0x7, 0, Ecx, 0x4041_481e, 0),
    (0x7, 0, Edx, 0x0000_000c, 0),
    (0xd, 0, Eax, 0x0000_02f8, 0),
    (0xd, 1, Eax, 0x0000_000e, 0),
    (0x8000_0001, 0, Ecx, 0x0000_0120, 0),
    (0x8000_0001, 0, Edx, 0x0400_0000, 0),
];

const T2: &[Row] = &[
    (0x1, 0, Eax, 0x0fff_3fff, 0x0003_06f2),
    (0x1, 0, Ecx, 0x0004_cdfc, 0),
    (0x1, 0, Edx, 0xe864_1080, 0x0000_1080),
    (0x7, 0, Ebx, 0xffef_fa54, 0x0000_0200),
    (0x7, 0, Ecx, 0x4041_5f5e, 0),
    (0x7, 0, Edx, 0x0000_011c, 0),
    (0xd, 0, Eax, 0x0000_02f8, 0),
    (0xd, 1, Eax, 0x0000_000e, 0),
    (0x8000_0001, 0, Ecx, 0x2000_0100, 0),
    (0x8000_0001, 0, Edx, 0x0400_0000, 0),
    (0x8000_0008, 0, Ebx, 0x0000_0200, 0),
];

const T2S: &[Row] = &[
    (0x1, 0, Eax, 0x0fff_3fff, 0x0003_06f2),
    (0x1, 0, Ecx, 0x0004_cdfc, 0),
    (0x1, 0, Edx, 0xe864_1080, 0x0000_1080),
    (0x7, 0, Ebx, 0xffef_da14, 0x0000_0200),
    (0x7, 0, Ecx, 0x4041_5f5e, 0),
    (0x7, 0, Edx, 0x0000_011c, 0),
    (0xd, 0, Eax, 0x0000_02f8, 0),
    (0xd, 1, Eax, 0x0000_000e, 0),
    (0x8000_0001, 0, Ecx, 0x2000_0100, 0),
    (0x8000_0001, 0, Edx, 0x0400_0000, 0),
    (0x8000_0008, 0, Ebx, 0x0000_0200, 0),
];

/// T2CL and T2A share every row but 0x8000_0008 EBX.
const T2CL_COMMON: &[Row] = &[
    (0x1, 0, Eax, 0x0fff_3fff, 0x0003_06f2),
    (0x1, 0, Ecx, 0x0004_cdfc, 0),
    (0x1, 0, Edx, 0xe864_1080, 0x0000_1080),
    (0x7, 0, Ebx, 0xffef_da14, 0x0000_0200),
    (0x7, 0, Ecx, 0x4041_5f5e, 0),
    (0x7, 0, Edx, 0x0000_011c, 0),
    (0xd, 0, Eax, 0x0000_02f8, 0),
    (0xd, 1, Eax, 0x0000_000e, 0),
    (0x8000_0001, 0, Ecx, 0x2000_01c0, 0),
    (0x8000_0001, 0, Edx, 0x07c0_0000, 0),
];
const T2CL_EXTRA: &[Row] = &[(0x8000_0008, 0, Ebx, 0x0000_0200, 0)];
const T2A_EXTRA: &[Row] = &[(0x8000_0008, 0, Ebx, 0x000c_0205, 0x000c_0000)];

/// MSR modifiers: address, filter, value.
const T2S_MSRS: &[(u32, u64, u64)] = &[(0x10a, u64::MAX, 0x0c4c)];
const T2CL_MSRS: &[(u32, u64, u64)] = &[(0x10a, 0xffff_ffff_f2f5_1e00, 0)];

/// The template's modifiers in the shape of `PUT /cpu-config`; `None` for `None`.
pub(crate) fn template(which: StaticCpuTemplate) -> Option<CustomCpuTemplate> {
    let (rows, msrs): (Vec<&Row>, &[(u32, u64, u64)]) = match which {
        StaticCpuTemplate::C3 => (C3.iter().collect(), &[]),
        StaticCpuTemplate::T2 => (T2.iter().collect(), &[]),
        StaticCpuTemplate::T2S => (T2S.iter().collect(), T2S_MSRS),
        StaticCpuTemplate::T2CL => (T2CL_COMMON.iter().chain(T2CL_EXTRA).collect(), T2CL_MSRS),
        StaticCpuTemplate::T2A => (T2CL_COMMON.iter().chain(T2A_EXTRA).collect(), &[]),
        StaticCpuTemplate::None => return None,
    };
    let cpuid_modifiers = rows
        .into_iter()
        .map(
            |&(leaf, subleaf, register, filter, value)| CpuidLeafModifier {
                leaf,
                subleaf,
                flags: 0,
                modifiers: vec![CpuidRegisterModifier {
                    register,
                    bitmap: RegisterValueFilter {
                        filter: filter.into(),
                        value: value.into(),
                    },
                }],
            },
        )
        .collect();
    let msr_modifiers = msrs
        .iter()
        .map(|&(addr, filter, value)| RegisterModifier {
            addr,
            bitmap: RegisterValueFilter { filter, value },
        })
        .collect();
    Some(CustomCpuTemplate {
        kvm_capabilities: Vec::new(),
        cpuid_modifiers,
        msr_modifiers,
    })
}
