//! Figures, the printed table and the JSON file.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// One row: a figure for squib, its floor, and squib / floor.
#[derive(Debug, Clone)]
pub struct Figure {
    pub id: String,
    pub figure: String,
    pub unit: &'static str,
    pub squib: Option<f64>,
    pub baseline: Option<f64>,
    /// What the baseline is; `None` for a figure reported without one.
    pub baseline_name: Option<String>,
    pub error: Option<String>,
    pub extra: Value,
    /// For squib and baseline measured in pairs, back to back: the median of the pairs'
    /// ratios, which `ratio` reports instead of squib / baseline (medians of each side taken
    /// from different moments of a loaded machine).
    pub paired_ratio: Option<f64>,
}

impl Figure {
    pub fn new(
        id: impl Into<String>,
        figure: impl Into<String>,
        unit: &'static str,
        squib: Option<f64>,
        baseline: Option<f64>,
        baseline_name: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            figure: figure.into(),
            unit,
            squib,
            baseline,
            baseline_name: Some(baseline_name.into()),
            error: None,
            extra: Value::Null,
            paired_ratio: None,
        }
    }

    /// A figure that could not be measured.
    pub fn failed(id: impl Into<String>, figure: impl Into<String>, error: String) -> Self {
        Self {
            id: id.into(),
            figure: figure.into(),
            unit: "",
            squib: None,
            baseline: None,
            baseline_name: None,
            error: Some(error),
            extra: Value::Null,
            paired_ratio: None,
        }
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = extra;
        self
    }

    /// The median of per-pair squib / baseline ratios, for a figure measured in pairs.
    pub fn with_paired_ratio(mut self, ratio: Option<f64>) -> Self {
        self.paired_ratio = ratio;
        self
    }

    /// A figure with no baseline by design.
    pub fn informational(mut self) -> Self {
        self.baseline_name = None;
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        if self.paired_ratio.is_some() {
            return self.paired_ratio;
        }
        match (self.squib, self.baseline) {
            (Some(s), Some(b)) if b > 0.0 => Some(s / b),
            _ => None,
        }
    }

    /// True when everything this figure should have was measured.
    pub fn complete(&self) -> bool {
        self.error.is_none()
            && self.squib.is_some_and(f64::is_finite)
            && (self.baseline_name.is_none() || self.ratio().is_some_and(f64::is_finite))
    }

    fn label(&self) -> String {
        if self.unit.is_empty() {
            self.figure.clone()
        } else {
            format!("{} ({})", self.figure, self.unit)
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "figure": self.figure,
            "unit": self.unit,
            "squib": self.squib,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": self.ratio(),
            "error": self.error,
            "extra": self.extra,
        })
    }
}

fn number(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "—".to_string(),
        Some(v) if unit == "req/s" => format!("{v:.0}"),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The table: figure, squib, baseline, ratio; then what each baseline is, and errors.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 4]> = figures
        .iter()
        .map(|f| {
            if let Some(err) = &f.error {
                let first = err.lines().next().unwrap_or_default();
                return [
                    f.label(),
                    "FAILED".into(),
                    "—".into(),
                    first.chars().take(60).collect(),
                ];
            }
            [
                f.label(),
                number(f.squib, f.unit),
                number(f.baseline, f.unit),
                f.ratio()
                    .map(|r| format!("{r:.2}×"))
                    .unwrap_or_else(|| "—".into()),
            ]
        })
        .collect();
    let header = ["figure", "squib", "baseline", "ratio"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 4]| {
        let _ = writeln!(
            out,
            "| {:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} |",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    };
    line(&mut out, header);
    let _ = writeln!(
        out,
        "|{}|{}|{}|{}|",
        "-".repeat(widths[0] + 2),
        "-".repeat(widths[1] + 1) + ":",
        "-".repeat(widths[2] + 1) + ":",
        "-".repeat(widths[3] + 1) + ":"
    );
    for row in &rows {
        line(&mut out, [&row[0], &row[1], &row[2], &row[3]]);
    }
    let mut baselines: Vec<&str> = Vec::new();
    for f in figures {
        if let Some(name) = &f.baseline_name
            && !baselines.contains(&name.as_str())
        {
            baselines.push(name);
        }
    }
    out.push_str("\nratio = squib / baseline");
    let paired: Vec<&str> = figures
        .iter()
        .filter(|f| f.paired_ratio.is_some())
        .map(|f| f.id.as_str())
        .collect();
    if !paired.is_empty() {
        let _ = write!(
            out,
            " ({}: measured in pairs back to back, the ratio is the median of the pairs' ratios)",
            paired.join(", ")
        );
    }
    out.push_str(". Baselines:\n");
    for name in baselines {
        let _ = writeln!(out, "  - {name}");
    }
    for f in figures.iter().filter(|f| f.error.is_some()) {
        let _ = writeln!(
            out,
            "\nFAILED {}: {}",
            f.id,
            f.error.as_deref().unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paired_figure_reports_the_median_of_its_pairs() {
        let plain = Figure::new("a", "a", "MB/s", Some(90.0), Some(100.0), "floor");
        assert_eq!(plain.ratio(), Some(0.9));
        let paired = Figure::new("b", "b", "MB/s", Some(90.0), Some(100.0), "floor")
            .with_paired_ratio(Some(1.02));
        assert_eq!(paired.ratio(), Some(1.02));
        assert!(paired.complete());
        let text = table(&[plain, paired]);
        assert!(text.contains("| 1.02× |"), "{text}");
        assert!(text.contains("(b: measured in pairs"), "{text}");
    }
}
