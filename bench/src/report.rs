//! The result of one scenario, and where it goes: `<out>/<date>-<host>-<scenario>.json`
//! (everything, raw samples included) and a section of `<out>/<date>-<host>.md` (the
//! report of that machine's day: one section per scenario, replaced when the scenario runs
//! again, the others kept).
//!
//! Every scenario has the same shape: variants (what is measured, each with its samples and
//! their summary) and comparisons (a variant against its baseline, with a target and a
//! verdict), so a command running several scenarios can gather them into one file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::stats::Summary;
use crate::{Context, Result};

/// Names the format of the JSON files.
pub const SCHEMA: &str = "vmfleet-bench/scenario/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub schema: String,
    pub scenario: String,
    pub title: String,
    /// What is measured, from when to when.
    pub description: String,
    /// UTC, `YYYY-MM-DD`: the date in the file names.
    pub date: String,
    pub started_at: String,
    pub finished_at: String,
    pub machine: Machine,
    /// The scenario's settings, as it records them.
    pub config: serde_json::Value,
    pub variants: Vec<Variant>,
    pub comparisons: Vec<Comparison>,
    /// The headline figures, each next to its peer or floor measured in the same run.
    #[serde(default)]
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

/// One headline figure: vmfleet's value, its peer's or floor's measured in the same run, and
/// their ratio; with the target when it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub unit: String,
    /// vmfleet's value.
    pub value: f64,
    /// What it is compared with (`node-socket.io`, `floor: ...`), and its value.
    pub peer: Option<String>,
    pub peer_value: Option<f64>,
    /// value / peer_value.
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub pass: Option<bool>,
}

impl Figure {
    pub fn new(scenario: &str, name: &str, unit: &str, value: f64) -> Self {
        Figure {
            scenario: scenario.to_owned(),
            name: name.to_owned(),
            unit: unit.to_owned(),
            value,
            peer: None,
            peer_value: None,
            ratio: None,
            target: None,
            pass: None,
        }
    }

    /// Next to `peer`'s value, with the ratio (none when the peer's value is 0).
    pub fn against(mut self, peer: &str, peer_value: f64) -> Self {
        self.peer = Some(peer.to_owned());
        self.peer_value = Some(peer_value);
        self.ratio = (peer_value != 0.0 && peer_value.is_finite() && self.value.is_finite())
            .then(|| (self.value / peer_value * 1000.0).round() / 1000.0);
        self
    }

    pub fn target(mut self, target: &str, pass: bool) -> Self {
        self.target = Some(target.to_owned());
        self.pass = Some(pass);
        self
    }
}

/// A number as the tables print it: three significant digits or so, thousands apart.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    let s = if a >= 1000.0 || (a.fract() == 0.0 && a < 1e15) {
        let int = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if a >= 100.0 {
        format!("{a:.0}")
    } else if a >= 10.0 {
        format!("{a:.1}")
    } else if a >= 1.0 {
        format!("{a:.2}")
    } else {
        format!("{a:.3}")
    };
    if v < 0.0 { format!("-{s}") } else { s }
}

/// The figures as a Markdown table.
pub fn figures_markdown(figures: &[Figure]) -> String {
    let mut md = String::new();
    md.push_str(
        "| scenario | figure | vmfleet | peer / floor (same run) | ratio | target | verdict |\n",
    );
    md.push_str("|---|---|---:|---|---:|---|---|\n");
    for f in figures {
        let peer = match (&f.peer, f.peer_value) {
            (Some(p), Some(v)) => format!("{} {}: {p}", num(v), f.unit),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {} | {} | {} | {} |",
            f.scenario,
            f.name,
            num(f.value),
            f.unit,
            peer,
            f.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            f.target.as_deref().unwrap_or("-"),
            match f.pass {
                Some(true) => "**pass**",
                Some(false) => "**FAIL**",
                None => "-",
            }
        );
    }
    md
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub description: String,
    /// Of `samples` (warm-up runs excluded).
    pub summary: Summary,
    pub samples: Vec<Sample>,
    /// Runs made before measuring (cold caches), not in the summary.
    pub warmup: Vec<Sample>,
}

/// One measured run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The run's index among the variant's measured (or warm-up) runs.
    pub run: usize,
    /// Its position in the whole benchmark's order of runs, all variants together.
    pub seq: usize,
    pub total_ms: f64,
    /// Points reached during the run, in ms since it started; the last one ends it.
    pub marks: Vec<Mark>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    pub at_ms: f64,
}

/// `subject` against `baseline` on one measure: what the subject adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub name: String,
    pub subject: String,
    pub baseline: String,
    pub measure: Measure,
    /// subject p50 - baseline p50.
    pub p50_diff_ms: f64,
    /// subject mean - baseline mean.
    pub mean_diff_ms: f64,
    /// subject run i - baseline run i, the runs being interleaved pair by pair.
    pub paired: Summary,
    /// The standard error of `paired.mean`.
    pub paired_stderr_ms: f64,
    /// Twice the standard error: a difference smaller than this is not told apart from
    /// noise.
    pub noise_ms: f64,
    /// When the comparison has a target: the difference must stay under it.
    pub target_ms: Option<f64>,
    /// Both p50_diff_ms and mean_diff_ms are under the target.
    pub pass: Option<bool>,
    /// The verdict holds across the noise: the larger of the two differences stays on the
    /// same side of the target when moved by `noise_ms` either way.
    pub conclusive: Option<bool>,
}

/// What a comparison measures on each sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "mark")]
pub enum Measure {
    /// The whole run.
    Total,
    /// From the start to a mark.
    UntilMark(String),
    /// From a mark to the end.
    FromMark(String),
}

impl Measure {
    /// The measure of one sample; `None` when it lacks the mark.
    pub fn of(&self, s: &Sample) -> Option<f64> {
        let mark = |name: &str| s.marks.iter().find(|m| m.name == name).map(|m| m.at_ms);
        match self {
            Measure::Total => Some(s.total_ms),
            Measure::UntilMark(m) => mark(m),
            Measure::FromMark(m) => mark(m).map(|at| round(s.total_ms - at)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Measure::Total => "start to end".into(),
            Measure::UntilMark(m) => format!("start to `{m}`"),
            Measure::FromMark(m) => format!("`{m}` to end"),
        }
    }
}

impl Comparison {
    /// Compares the runs both variants have the measure for, pairing run i with run i.
    pub fn new(
        name: &str,
        subject: &Variant,
        baseline: &Variant,
        measure: Measure,
        target_ms: Option<f64>,
    ) -> Self {
        let values =
            |v: &Variant| -> Vec<Option<f64>> { v.samples.iter().map(|s| measure.of(s)).collect() };
        let (sv, bv) = (values(subject), values(baseline));
        let s_all: Vec<f64> = sv.iter().flatten().copied().collect();
        let b_all: Vec<f64> = bv.iter().flatten().copied().collect();
        let (ss, bs) = (
            Summary::of(&s_all).unwrap_or_default(),
            Summary::of(&b_all).unwrap_or_default(),
        );
        let diffs: Vec<f64> = sv
            .iter()
            .zip(&bv)
            .filter_map(|(s, b)| Some(round((*s)? - (*b)?)))
            .collect();
        let paired = Summary::of(&diffs).unwrap_or_default();
        let p50_diff_ms = round(ss.p50 - bs.p50);
        let mean_diff_ms = round(ss.mean - bs.mean);
        let noise_ms = round(2.0 * paired.stderr());
        Comparison {
            name: name.to_owned(),
            subject: subject.name.clone(),
            baseline: baseline.name.clone(),
            measure,
            p50_diff_ms,
            mean_diff_ms,
            paired_stderr_ms: paired.stderr(),
            noise_ms,
            paired,
            target_ms,
            pass: target_ms.map(|t| p50_diff_ms < t && mean_diff_ms < t),
            conclusive: target_ms.map(|t| {
                let worst = p50_diff_ms.max(mean_diff_ms);
                worst + noise_ms < t || worst - noise_ms >= t
            }),
        }
    }

    fn verdict(&self) -> String {
        match (self.pass, self.conclusive) {
            (Some(true), Some(true)) => "**pass**".into(),
            (Some(false), Some(true)) => "**FAIL**".into(),
            (Some(p), _) => format!(
                "{} (inconclusive: noise ±{:.0} ms)",
                if p { "pass" } else { "fail" },
                self.noise_ms
            ),
            (None, _) => "-".into(),
        }
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

impl ScenarioResult {
    /// The scenario's section of the Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {}: {}\n", self.scenario, self.title);
        let _ = writeln!(md, "{}\n", self.description);
        let _ = writeln!(
            md,
            "Run {} to {}; load average {} at the start, {} at the end; {} other QEMU \
             process(es) at the start, {} at the end.\n",
            self.started_at,
            self.finished_at,
            self.machine.load_start,
            self.machine.load_end,
            self.machine.other_qemus_start,
            self.machine.other_qemus_end
        );
        md.push_str(
            "| variant | runs | min ms | p50 ms | mean ms | p90 ms | max ms | stddev ms |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for v in &self.variants {
            let s = &v.summary;
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                v.name, s.n, s.min, s.p50, s.mean, s.p90, s.max, s.stddev
            );
        }
        md.push('\n');
        for v in &self.variants {
            let _ = writeln!(md, "- **{}**: {}", v.name, v.description);
        }
        md.push('\n');
        if !self.comparisons.is_empty() {
            md.push_str(
                "| comparison | measure | p50 diff ms | mean diff ms | paired diff p50 ms | paired diff mean ± 2 s.e. ms | target | verdict |\n",
            );
            md.push_str("|---|---|---:|---:|---:|---:|---|---|\n");
        }
        for c in &self.comparisons {
            let _ = writeln!(
                md,
                "| {} ({} - {}) | {} | {:+.1} | {:+.1} | {:+.1} | {:+.1} ± {:.1} | {} | {} |",
                c.name,
                c.subject,
                c.baseline,
                c.measure.describe(),
                c.p50_diff_ms,
                c.mean_diff_ms,
                c.paired.p50,
                c.paired.mean,
                c.noise_ms,
                c.target_ms.map_or("-".into(), |t| format!("< {t} ms")),
                c.verdict()
            );
        }
        md.push('\n');
        if !self.figures.is_empty() {
            md.push_str(&figures_markdown(&self.figures));
            md.push('\n');
        }
        md.push_str(&self.marks_markdown());
        if !self.notes.is_empty() {
            md.push_str("Notes:\n\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
            md.push('\n');
        }
        md
    }

    /// The median time at which each variant reached each of its marks.
    fn marks_markdown(&self) -> String {
        let mut md = String::new();
        if self
            .variants
            .iter()
            .all(|v| v.samples.iter().all(|s| s.marks.is_empty()))
        {
            return md;
        }
        md.push_str("Where the time goes (median ms since the run started, per mark):\n\n");
        md.push_str("| variant | marks |\n|---|---|\n");
        for v in &self.variants {
            let Some(first) = v.samples.first() else {
                continue;
            };
            let marks: Vec<String> = first
                .marks
                .iter()
                .map(|m| {
                    let at: Vec<f64> = v
                        .samples
                        .iter()
                        .filter_map(|s| s.marks.iter().find(|x| x.name == m.name))
                        .map(|x| x.at_ms)
                        .collect();
                    let p50 = Summary::of(&at).map_or(0.0, |s| s.p50);
                    format!("{} {:.1}", m.name, p50)
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", v.name, marks.join(" → "));
        }
        md.push('\n');
        md
    }

    /// `<date>-<host>`: the stem of this machine's files of the day.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.date, self.machine.file_host())
    }

    /// Writes the JSON file and this scenario's section of the Markdown report under `out`;
    /// returns both paths.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        write_scenario(
            out,
            &self.stem(),
            &self.scenario,
            &self.machine,
            self,
            &self.markdown(),
        )
    }
}

/// The machine, as a Markdown list.
pub fn machine_markdown(m: &Machine) -> String {
    format!(
        "## Machine\n\n\
         - host: {} ({})\n\
         - CPU: {}, {} logical cores\n\
         - memory: {} MiB\n\
         - host kernel: {}\n\
         - hypervisor: {}, accel={}\n",
        m.hostname,
        m.os,
        m.cpu_model,
        m.cores,
        m.memory_mib,
        m.host_kernel,
        m.qemu_version,
        m.accel
    )
}

/// Replaces the section `key` of `doc` (between `<!-- bench:KEY -->` and
/// `<!-- /bench:KEY -->`) with `body`, or appends it.
pub fn upsert_section(doc: &str, key: &str, body: &str) -> String {
    let open = format!("<!-- bench:{key} -->");
    let close = format!("<!-- /bench:{key} -->");
    let section = format!("{open}\n{}\n{close}", body.trim_end());
    if let Some(start) = doc.find(&open)
        && let Some(len) = doc[start..].find(&close)
    {
        let end = start + len + close.len();
        return format!("{}{section}{}", &doc[..start], &doc[end..]);
    }
    let mut out = doc.trim_end().to_owned();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(&section);
    out.push('\n');
    out
}

/// `doc` starting with the `title` line (added if missing).
pub(crate) fn with_title(doc: &str, title: &str) -> String {
    if doc.starts_with("# ") {
        doc.to_owned()
    } else {
        format!("{title}\n\n{doc}")
    }
}

/// Writes through a `.tmp` file and a rename, so a reader never sees half a report.
/// Writes one scenario's `results` as `OUT/<stem>-<scenario>.json` and `markdown` as its
/// section of the day's report `OUT/<stem>.md` (with the machine's section and the title);
/// `stem` is `<date>-<host>`. Both paths.
pub(crate) fn write_scenario(
    out: &Path,
    stem: &str,
    scenario: &str,
    machine: &Machine,
    results: &impl serde::Serialize,
    markdown: &str,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).context(format!("creating {}", out.display()))?;
    let json_path = out.join(format!("{stem}-{scenario}.json"));
    let mut json = serde_json::to_string_pretty(results).context("encoding the results")?;
    json.push('\n');
    write_atomic(&json_path, &json)?;
    let md_path = out.join(format!("{stem}.md"));
    let doc = std::fs::read_to_string(&md_path).unwrap_or_default();
    let doc = upsert_section(&doc, "machine", &machine_markdown(machine));
    let doc = upsert_section(&doc, &format!("scenario {scenario}"), markdown);
    let doc = with_title(&doc, &format!("# vmfleet benchmarks: {stem}"));
    write_atomic(&md_path, &doc)?;
    Ok((json_path, md_path))
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("out")
    ));
    std::fs::write(&tmp, text).context(format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).context(format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_carry_their_ratio() {
        let f = Figure::new("s", "x", "ms", 3.0).against("floor", 2.0);
        assert_eq!(f.ratio, Some(1.5));
        assert_eq!(
            Figure::new("s", "x", "ms", 3.0).against("p", 0.0).ratio,
            None
        );
        assert_eq!(num(12345.6), "12,346");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(-2.5), "-2.50");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(num(50.0), "50");
        assert_eq!(num(0.0), "0");
    }

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = upsert_section("", "a", "first A\n");
        let doc = upsert_section(&doc, "b", "B");
        let doc = upsert_section(&doc, "a", "second A");
        assert_eq!(
            doc,
            "<!-- bench:a -->\nsecond A\n<!-- /bench:a -->\n\n<!-- bench:b -->\nB\n<!-- /bench:b -->\n"
        );
        let doc = with_title(&doc, "# T");
        assert!(doc.starts_with("# T\n\n<!-- bench:a -->"));
        assert_eq!(with_title(&doc, "# other"), doc);
    }

    fn variant(name: &str, totals: &[f64]) -> Variant {
        let samples: Vec<Sample> = totals
            .iter()
            .enumerate()
            .map(|(i, &t)| Sample {
                run: i,
                seq: i,
                total_ms: t,
                marks: vec![Mark {
                    name: "ready".into(),
                    at_ms: t,
                }],
            })
            .collect();
        Variant {
            name: name.into(),
            description: String::new(),
            summary: Summary::of(totals).unwrap(),
            samples,
            warmup: Vec::new(),
        }
    }

    #[test]
    fn comparisons_pair_the_runs() {
        let a = variant("a", &[110.0, 220.0, 130.0]);
        let b = variant("b", &[100.0, 200.0, 100.0]);
        let c = Comparison::new("overhead", &a, &b, Measure::Total, Some(50.0));
        assert_eq!(c.p50_diff_ms, 30.0);
        assert_eq!(c.mean_diff_ms, 20.0);
        assert_eq!(
            (c.paired.min, c.paired.p50, c.paired.max),
            (10.0, 20.0, 30.0)
        );
        assert_eq!(c.noise_ms, 11.548);
        assert_eq!((c.pass, c.conclusive), (Some(true), Some(true)));
        let c = Comparison::new("x", &a, &b, Measure::Total, Some(15.0));
        assert_eq!((c.pass, c.conclusive), (Some(false), Some(true)));
        assert_eq!(c.verdict(), "**FAIL**");
        // Within the noise of the target, either way.
        let c = Comparison::new("x", &a, &b, Measure::Total, Some(25.0));
        assert_eq!(c.verdict(), "fail (inconclusive: noise ±12 ms)");
        let c = Comparison::new("x", &a, &b, Measure::Total, Some(35.0));
        assert_eq!(c.verdict(), "pass (inconclusive: noise ±12 ms)");
        // Measures from marks; a sample without the mark is left out.
        let mut a = a;
        a.samples[2].marks.clear();
        let c = Comparison::new("x", &a, &b, Measure::UntilMark("ready".into()), None);
        assert_eq!((c.paired.n, c.paired.p50), (2, 15.0));
        assert_eq!(c.pass, None);
        let c = Comparison::new("x", &a, &b, Measure::FromMark("ready".into()), None);
        assert_eq!(c.paired.p50, 0.0);
    }

    #[test]
    fn writes_json_and_the_report_of_the_day() {
        let dir = tempfile::tempdir().unwrap();
        let a = variant("driver", &[110.0, 220.0]);
        let b = variant("by-hand", &[100.0, 200.0]);
        let r = ScenarioResult {
            schema: SCHEMA.into(),
            scenario: "boot".into(),
            title: "t".into(),
            description: "d".into(),
            date: "2026-01-02".into(),
            started_at: "s".into(),
            finished_at: "f".into(),
            machine: Machine::read("tcg", Path::new("/nonexistent")),
            config: serde_json::json!({"runs": 2}),
            comparisons: vec![Comparison::new(
                "overhead",
                &a,
                &b,
                Measure::Total,
                Some(50.0),
            )],
            variants: vec![a, b],
            figures: vec![Figure::new("boot", "p50", "ms", 110.0).against("by-hand", 100.0)],
            notes: vec!["n".into()],
        };
        let (json, md) = r.write(dir.path()).unwrap();
        assert!(json.ends_with(format!("2026-01-02-{}-boot.json", r.machine.file_host())));
        let back: ScenarioResult =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(back, r);
        r.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(&md).unwrap();
        assert_eq!(text.matches("<!-- bench:scenario boot -->").count(), 1);
        assert!(text.contains("| driver | 2 |"));
        assert!(
            text.contains("| boot | p50 | 110 ms | 100 ms: by-hand | 1.10x |"),
            "{text}"
        );
        assert!(text.contains("**pass**") || text.contains("(inconclusive"));
        assert!(
            !dir.path()
                .read_dir()
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".tmp") })
        );
    }
}
