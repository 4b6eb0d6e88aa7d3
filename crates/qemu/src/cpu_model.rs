//! The engine's side of a CPU template ([`squib_cpu_template`] builds the `-cpu` argument):
//! after QEMU has realised the vCPUs (still paused), which `+feat`/`-feat` did it honour?
//!
//! QEMU drops a requested feature the accelerator cannot provide (TCG prints "TCG doesn't
//! support requested feature", KVM "host doesn't support requested feature") and starts
//! anyway; squib reads the features back over QMP and says so once, in its own words.

use serde_json::Value;

use squib_cpu_template::{CpuFlag, CpuModel};

use crate::accel::Accel;
use squib_qmp::QmpClient;

/// The flags whose realised value differs from the request, read from the first vCPU.
pub(crate) async fn unapplied(qmp: &QmpClient, model: &CpuModel) -> Result<Vec<CpuFlag>, String> {
    let paths = qmp.cpu_qom_paths().await.map_err(|e| e.to_string())?;
    let Some(cpu) = paths.first() else {
        return Err("QEMU reported no vCPU".to_string());
    };
    let mut out = Vec::new();
    for flag in &model.flags {
        match qmp.qom_get(cpu, flag.name).await {
            Ok(Value::Bool(on)) if on != flag.enabled => out.push(*flag),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// The warning for flags QEMU did not apply, if any.
pub(crate) fn unapplied_warning(accel: Accel, flags: &[CpuFlag]) -> Option<String> {
    if flags.is_empty() {
        return None;
    }
    let list = flags.iter().map(ToString::to_string).collect::<Vec<_>>();
    let why = match accel {
        Accel::Tcg => {
            "TCG cannot emulate them, so QEMU dropped them (its own message is \"TCG doesn't support requested feature\")"
        }
        Accel::Kvm => "the host CPU or KVM does not offer them, so QEMU dropped them",
    };
    Some(format!(
        "the CPU template asked for CPU features the guest does not get: {}; {why}",
        list.join(",")
    ))
}

/// Checks the realised vCPU against `model` and warns once about what did not apply.
pub(crate) async fn warn_unapplied(qmp: &QmpClient, model: &CpuModel, accel: Accel) {
    match unapplied(qmp, model).await {
        Ok(flags) => {
            if let Some(warning) = unapplied_warning(accel, &flags) {
                tracing::warn!(template = ?model.source, "{warning}");
            }
        }
        Err(e) => tracing::warn!(
            template = ?model.source,
            "cannot check which CPU template features QEMU applied: {e}"
        ),
    }
}

/// Warns once about each kind of template setting the `-cpu` argument cannot express.
pub(crate) fn warn_unexpressible(model: &CpuModel) {
    for warning in model.unhonoured() {
        tracing::warn!(template = ?model.source, "{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_names_the_accelerator_and_the_flags() {
        assert_eq!(unapplied_warning(Accel::Tcg, &[]), None);
        let flags = [
            CpuFlag {
                name: "avx512f",
                enabled: true,
            },
            CpuFlag {
                name: "rsba",
                enabled: true,
            },
        ];
        let tcg = unapplied_warning(Accel::Tcg, &flags).unwrap();
        assert!(tcg.contains("+avx512f,+rsba") && tcg.contains("TCG cannot emulate them"));
        let kvm = unapplied_warning(Accel::Kvm, &flags).unwrap();
        assert!(kvm.contains("host CPU or KVM"));
    }
}
