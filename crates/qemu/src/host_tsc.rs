//! The host's TSC rate, which a TCG guest needs on its command line (see `kernel_cmdline`).

/// Reads the TSC rate in kHz from `/proc/cpuinfo`; `None` unless the TSC is constant-rate.
pub(crate) fn host_tsc_khz() -> Option<u64> {
    parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_cpuinfo(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim())
    };
    // Without a constant TSC, "cpu MHz" is the current core clock, not the TSC's.
    if !field("flags")?
        .split_whitespace()
        .any(|f| f == "constant_tsc")
    {
        return None;
    }
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_tsc_required() {
        let with =
            "processor\t: 0\ncpu MHz\t\t: 2596.148\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert_eq!(parse_cpuinfo(with), Some(2_596_148));
        let without = "cpu MHz\t\t: 2596.148\nflags\t\t: fpu tsc\n";
        assert_eq!(parse_cpuinfo(without), None);
        assert_eq!(parse_cpuinfo("flags : constant_tsc\n"), None);
    }
}
